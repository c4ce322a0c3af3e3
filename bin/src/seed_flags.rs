//! The Go tsdb-operator's manager flags, so that its Deployments run this operator unchanged: Go's flag syntax
//! (`-flag`, `--flag`, `--flag=true`, bare booleans that never take the next argument, `strconv.ParseBool`
//! spellings), controller-runtime's zap logging flags, and the flags of features this version does not have yet,
//! which are accepted when off and refused with a message naming the flag when turned on.

use clap::{ArgAction, Args};
use tsdb_operator_adapters::certificate;
use tsdb_operator_adapters::tls::TlsSource;

/// Go's `strconv.ParseBool`: `1 t T TRUE true True` and `0 f F FALSE false False`.
pub fn go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean: use true or false (or 1, t, T, TRUE, True, 0, f, F, FALSE, False)")),
    }
}

/// Rewrites Go's single-dash long flags (`-leader-elect`, `-zap-log-level=debug`) into `--` form. Other
/// arguments, values such as `-1` included, are kept as they are.
pub fn normalize_go_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    args.into_iter()
        .map(|arg| {
            let Some(s) = arg.to_str() else { return arg };
            let name = s.strip_prefix('-').filter(|rest| !rest.starts_with('-')).map(|r| r.split('=').next());
            match name.flatten() {
                Some(name)
                    if name.len() > 1
                        && name.starts_with(|c: char| c.is_ascii_lowercase())
                        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
                {
                    format!("-{s}").into()
                }
                _ => arg,
            }
        })
        .collect()
}

/// The seed's flags beyond the ones this operator had, and controller-runtime's zap flags.
#[derive(Args, Clone, Debug)]
#[allow(clippy::struct_excessive_bools)] // the seed's flags are booleans, one field each
pub struct SeedFlags {
    /// Serve /metrics over HTTPS to callers whose bearer token the API server accepts (TokenReview) and whose user
    /// may `get` the non-resource URL /metrics (SubjectAccessReview), as the seed does; `false` serves plain HTTP.
    #[arg(long, value_parser = go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "true", action = ArgAction::Set)]
    pub metrics_secure: bool,
    /// Directory of the metrics server's certificate and key (with --metrics-secure), re-read when they change;
    /// empty: a self-signed certificate is generated at start.
    #[arg(long, default_value = "")]
    pub metrics_cert_path: String,
    /// File name of the metrics certificate in --metrics-cert-path.
    #[arg(long, default_value = "tls.crt")]
    pub metrics_cert_name: String,
    /// File name of the metrics key in --metrics-cert-path.
    #[arg(long, default_value = "tls.key")]
    pub metrics_cert_key: String,
    /// Allow HTTP/2 on the operator's servers. They speak HTTP/1.1 only, which is what `false` (the seed's
    /// default) asks for; `true` is accepted with a warning.
    #[arg(long, value_parser = go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub enable_http2: bool,
    /// Self-healing of stuck replicas, operator-wide; `false` turns it off for every cluster whatever its
    /// `spec.selfHealing` says.
    #[arg(long, value_parser = go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "true", action = ArgAction::Set)]
    pub enable_ha: bool,
    /// The validating admission webhook for PrometheusClusters and PrometheusClusterSets (HTTPS on
    /// --webhook-bind-address).
    #[arg(long, value_parser = go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub enable_webhook: bool,
    /// Directory of the webhook server's certificate (cert-manager's Secret, mounted). Empty: the operator keeps
    /// its own certificate authority in --webhook-secret-name and the configuration's caBundle current.
    #[arg(long, default_value = "")]
    pub webhook_cert_path: String,
    /// Address of the webhook server.
    #[arg(long, default_value = ":9443")]
    pub webhook_bind_address: String,
    /// The Secret (in $POD_NAMESPACE) where the operator keeps the webhook's certificates when
    /// --webhook-cert-path is empty.
    #[arg(long, default_value = "tsdb-operator-webhook-tls")]
    pub webhook_secret_name: String,
    /// The ValidatingWebhookConfiguration whose caBundle the operator keeps current when --webhook-cert-path is
    /// empty.
    #[arg(long, default_value = "tsdb-operator")]
    pub webhook_configuration_name: String,
    /// The webhook Service (in $POD_NAMESPACE), whose DNS names the operator's certificate carries.
    #[arg(long, default_value = "tsdb-operator-webhook")]
    pub webhook_service_name: String,
    /// More DNS names or IP addresses for the operator's webhook certificate (comma-separated), for a
    /// configuration that calls the webhook by URL.
    #[arg(long, value_delimiter = ',')]
    pub webhook_host: Vec<String>,
    /// Seconds between two checks of the operator's own certificates, the webhook's and the REST API's (renewal,
    /// published bundle, changes made by other replicas).
    #[arg(long, default_value_t = 60, hide = true)]
    pub webhook_certificate_check_seconds: u64,
    /// File name of the webhook certificate.
    #[arg(long, default_value = "tls.crt")]
    pub webhook_cert_name: String,
    /// File name of the webhook key.
    #[arg(long, default_value = "tls.key")]
    pub webhook_cert_key: String,
    /// The REST API: HTTPS, every caller authenticated and authorised by the API server (see docs/api.md). Off
    /// by default (the seed's default is true): it can create and delete clusters, so turning it on is a choice.
    #[arg(long, value_parser = go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub enable_api: bool,
    /// Address of the REST API.
    #[arg(long, default_value = ":8080")]
    pub api_address: String,
    /// Directory of the REST API's TLS certificate (`tls.crt`, `tls.key`; cert-manager's Secret, mounted), re-read
    /// when it changes. Empty: the operator keeps its own certificate authority in --api-secret-name and publishes
    /// it in --api-ca-configmap-name for the API's callers.
    #[arg(long, default_value = "")]
    pub api_tls_cert_dir: String,
    /// The Secret (in $POD_NAMESPACE) where the operator keeps the REST API's certificates when
    /// --api-tls-cert-dir is empty.
    #[arg(long, default_value = "tsdb-operator-api-tls")]
    pub api_secret_name: String,
    /// The ConfigMap (in $POD_NAMESPACE) where the operator publishes the authority of its REST API certificate
    /// (key `ca.crt`), for callers to trust, when --api-tls-cert-dir is empty.
    #[arg(long, default_value = "tsdb-operator-api-ca")]
    pub api_ca_configmap_name: String,
    /// The REST API Service (in $POD_NAMESPACE), whose DNS names the operator's certificate carries (with
    /// `localhost` and `127.0.0.1`, for `kubectl port-forward`).
    #[arg(long, default_value = "tsdb-operator-api")]
    pub api_service_name: String,
    /// More DNS names or IP addresses for the operator's REST API certificate (comma-separated), e.g. an
    /// Ingress host.
    #[arg(long, value_delimiter = ',')]
    pub api_host: Vec<String>,
    /// Namespace of the REST API's objects.
    #[arg(long, default_value = "default")]
    pub api_namespace: String,
    /// Database of the audit trail: `sqlite:/path/audit.db` or `postgres://user@host/db` (`sslmode=require` for
    /// TLS). Empty: no audit trail.
    #[arg(long, env = "TSDB_AUDIT_DSN", default_value = "", hide_env_values = true)]
    pub audit_dsn: String,
    /// Directory of the audit trail's durable spool (records not yet in the database survive a restart there).
    #[arg(long, default_value = "/var/lib/tsdb-operator/audit-spool")]
    pub audit_spool_dir: String,
    /// Days audit records are kept (0: forever).
    #[arg(long, default_value_t = 0)]
    pub audit_retention_days: u32,
    /// controller-runtime's development mode: text logs at debug level.
    #[arg(long, value_parser = go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub zap_devel: bool,
    /// Log encoding: `json` or `console` (text); overrides --log-format.
    #[arg(long, value_parser = ["json", "console"])]
    pub zap_encoder: Option<String>,
    /// Log level: debug, info, error, panic, or a verbosity number (1: debug, 2 or more: trace). `RUST_LOG`
    /// overrides it.
    #[arg(long, value_parser = zap_level)]
    pub zap_log_level: Option<String>,
    /// Accepted for compatibility; log lines carry their error's causes instead of stack traces.
    #[arg(long, value_parser = ["info", "error", "panic"])]
    pub zap_stacktrace_level: Option<String>,
    /// Accepted for compatibility; text and JSON logs carry RFC 3339 times.
    #[arg(long, value_parser = ["epoch", "millis", "nano", "iso8601", "rfc3339", "rfc3339nano"])]
    pub zap_time_encoding: Option<String>,
}

/// Where a server's certificate comes from.
pub enum Certificates {
    /// Mounted files (cert-manager).
    Files(TlsSource),
    /// The operator's own, kept in a Secret, its authority published for the clients.
    Managed(certificate::Settings),
}

/// The in-cluster DNS names of `service` in `namespace`.
fn service_hosts(service: &str, namespace: &str) -> Vec<String> {
    vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local")]
}

/// Log settings from the flags: the format and the default filter (`RUST_LOG` overrides it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// A tracing `EnvFilter` directive.
    pub filter: String,
}

/// The quiet default: the operator at info, its libraries at warn.
pub const DEFAULT_FILTER: &str = "info,kube=warn,hyper=warn";

/// `--zap-log-level`: a level name or a verbosity number.
fn zap_level(s: &str) -> Result<String, String> {
    match s {
        "debug" | "info" | "error" | "panic" => Ok(s.to_owned()),
        _ if s.parse::<u8>().is_ok() => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not a level: use debug, info, error, panic or a verbosity number such as 2")),
    }
}

impl SeedFlags {
    /// Refuses an unusable `--audit-dsn`, naming the flag and the fix.
    ///
    /// # Errors
    /// When `--audit-dsn` names a database the audit trail cannot use.
    pub fn refuse_unavailable(&self) -> anyhow::Result<()> {
        let dsn = &self.audit_dsn;
        if !dsn.is_empty() && !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| dsn.starts_with(p)) {
            anyhow::bail!(
                "--audit-dsn (or $TSDB_AUDIT_DSN) {:?}: use sqlite:/path/to/audit.db or postgres://user@host/database",
                tsdb_operator_adapters::audit::store::redact(dsn)
            );
        }
        Ok(())
    }

    /// Where the secure metrics server's certificate comes from: the files of `--metrics-cert-*` when a path is
    /// set, else a self-signed certificate for `names`.
    pub fn metrics_tls(&self, names: Vec<String>) -> TlsSource {
        if self.metrics_cert_path.is_empty() {
            TlsSource::SelfSigned(names)
        } else {
            let dir = std::path::Path::new(&self.metrics_cert_path);
            TlsSource::Files {
                cert: dir.join(&self.metrics_cert_name),
                key: dir.join(&self.metrics_cert_key),
                flags: "--metrics-cert",
            }
        }
    }

    /// Where the REST API's certificate comes from: `tls.crt` and `tls.key` of `--api-tls-cert-dir` when set,
    /// else the operator's own certificates for the API Service in `namespace`, `localhost`, `127.0.0.1` (for a
    /// port-forward) and `--api-host`, with the authority published in `--api-ca-configmap-name`.
    pub fn api_certificates(&self, namespace: &str) -> Certificates {
        if self.api_tls_cert_dir.is_empty() {
            let mut hosts = service_hosts(&self.api_service_name, namespace);
            hosts.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
            for host in &self.api_host {
                if !host.is_empty() && !hosts.contains(host) {
                    hosts.push(host.clone());
                }
            }
            Certificates::Managed(certificate::Settings {
                purpose: "api",
                namespace: namespace.to_owned(),
                secret: self.api_secret_name.clone(),
                publish: certificate::Publish::ConfigMap(self.api_ca_configmap_name.clone()),
                hosts,
            })
        } else {
            let dir = std::path::Path::new(&self.api_tls_cert_dir);
            Certificates::Files(TlsSource::Files {
                cert: dir.join("tls.crt"),
                key: dir.join("tls.key"),
                flags: "--api-tls-cert-dir",
            })
        }
    }

    /// Where the webhook's certificate comes from: the files of `--webhook-cert-*` when a path is set, else the
    /// operator's own certificates for the Service in `namespace` (and `--webhook-host`), with the authority kept
    /// in the configuration's `caBundle`.
    pub fn webhook_certificates(&self, namespace: &str) -> Certificates {
        if self.webhook_cert_path.is_empty() {
            let mut hosts = service_hosts(&self.webhook_service_name, namespace);
            hosts.extend(self.webhook_host.iter().filter(|h| !h.is_empty()).cloned());
            Certificates::Managed(certificate::Settings {
                purpose: "webhook",
                namespace: namespace.to_owned(),
                secret: self.webhook_secret_name.clone(),
                publish: certificate::Publish::WebhookConfiguration(self.webhook_configuration_name.clone()),
                hosts,
            })
        } else {
            let dir = std::path::Path::new(&self.webhook_cert_path);
            Certificates::Files(TlsSource::Files {
                cert: dir.join(&self.webhook_cert_name),
                key: dir.join(&self.webhook_cert_key),
                flags: "--webhook-cert",
            })
        }
    }

    /// The log settings, from `--log-format` and the zap flags (which win).
    pub fn log_settings(&self, log_format: &str) -> LogSettings {
        let format = match self.zap_encoder.as_deref() {
            Some("json") => "json",
            Some(_) => "text",
            None if self.zap_devel => "text",
            None => log_format,
        };
        let level = self.zap_log_level.as_deref().or(self.zap_devel.then_some("debug"));
        let filter = match level {
            None | Some("info" | "0") => DEFAULT_FILTER,
            Some("debug" | "1") => "debug,kube=info,hyper=info,h2=info,tower=info,rustls=info",
            Some("error" | "panic") => "error",
            Some(_) => "trace,hyper=debug,h2=debug,rustls=debug",
        };
        LogSettings { format: format.to_owned(), filter: filter.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Probe {
        #[arg(long, value_parser = go_bool, num_args = 0..=1, require_equals = true, default_missing_value = "true",
              default_value = "false", action = ArgAction::Set)]
        leader_elect: bool,
        #[arg(long, default_value = ":8081")]
        health_probe_bind_address: String,
        #[command(flatten)]
        seed: SeedFlags,
        #[arg(long, default_value = "text")]
        log_format: String,
    }

    fn parse(args: &[&str]) -> Result<Probe, clap::Error> {
        let args = std::iter::once("tsdb-operator").chain(args.iter().copied()).map(std::ffi::OsString::from);
        Probe::try_parse_from(normalize_go_args(args))
    }

    #[test]
    fn go_boolean_spellings_and_bare_flags_parse() {
        for (args, want) in [
            (&["--leader-elect"][..], true),
            (&["--leader-elect=true"], true),
            (&["--leader-elect=1"], true),
            (&["--leader-elect=True"], true),
            (&["--leader-elect=false"], false),
            (&["--leader-elect=F"], false),
            (&["-leader-elect"], true),
            (&["-leader-elect=0"], false),
            (&[], false),
        ] {
            assert_eq!(parse(args).unwrap().leader_elect, want, "{args:?}");
        }
        assert!(parse(&[]).unwrap().seed.enable_ha, "--enable-ha defaults to true like the seed's");
        assert!(!parse(&["--enable-ha=false"]).unwrap().seed.enable_ha);
    }

    #[test]
    fn a_bare_boolean_never_takes_the_next_argument() {
        // Go: `--leader-elect false` is a bare flag followed by a positional argument, which the manager refuses.
        assert!(parse(&["--leader-elect", "false"]).is_err());
        let p = parse(&["--leader-elect", "--health-probe-bind-address", ":9000"]).unwrap();
        assert!(p.leader_elect);
        assert_eq!(p.health_probe_bind_address, ":9000");
    }

    #[test]
    fn a_bad_boolean_names_the_accepted_spellings() {
        let err = parse(&["--enable-ha=yes"]).unwrap_err().to_string();
        assert!(err.contains("--enable-ha") && err.contains("use true or false"), "{err}");
    }

    #[test]
    fn single_dash_long_flags_become_double_dash_and_values_are_kept() {
        let out = normalize_go_args(
            ["tsdb-operator", "-zap-log-level=debug", "-h", "--x", "-1", "-audit-retention-days", "7"]
                .map(std::ffi::OsString::from),
        );
        let out: Vec<_> = out.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(out, ["tsdb-operator", "--zap-log-level=debug", "-h", "--x", "-1", "--audit-retention-days", "7"]);
    }

    #[test]
    fn the_seed_deployment_arguments_are_accepted() {
        // The arguments the Go operator's chart and kubebuilder manifests pass (`--enable-backup` is one of the
        // operator's own flags, tested with them).
        let p = parse(&[
            "--leader-elect=true",
            "--health-probe-bind-address=:8081",
            "--metrics-secure=false",
            "--enable-ha=true",
            "--enable-webhook=false",
            "--enable-api=false",
            "--api-address=:8080",
            "--api-namespace=monitoring",
            "--audit-retention-days=30",
            "--webhook-cert-path=/tmp/k8s-webhook-server/serving-certs",
            "--metrics-cert-path=/tmp/k8s-metrics-server/metrics-certs",
            "--enable-http2=false",
            "--zap-devel=false",
            "--zap-encoder=json",
            "--zap-log-level=info",
            "--zap-stacktrace-level=error",
            "--zap-time-encoding=iso8601",
        ])
        .unwrap();
        assert!(p.leader_elect && p.seed.enable_ha);
        assert_eq!(p.seed.api_namespace, "monitoring");
        p.seed.refuse_unavailable().unwrap();
        assert_eq!(
            p.seed.log_settings(&p.log_format),
            LogSettings { format: "json".into(), filter: DEFAULT_FILTER.into() }
        );
    }

    #[test]
    fn the_api_is_off_unless_asked_for_and_serves_the_mounted_or_its_own_certificate() {
        let p = parse(&[]).unwrap();
        assert!(!p.seed.enable_api, "off by default: it can create and delete clusters");
        let Certificates::Managed(own) = p.seed.api_certificates("ops") else { panic!("managed") };
        assert_eq!((own.purpose, own.namespace.as_str(), own.secret.as_str()), ("api", "ops", "tsdb-operator-api-tls"));
        assert_eq!(own.publish, certificate::Publish::ConfigMap("tsdb-operator-api-ca".into()));
        let names = ["tsdb-operator-api.ops.svc", "tsdb-operator-api.ops.svc.cluster.local", "localhost", "127.0.0.1"];
        assert_eq!(own.hosts, names);
        let p = parse(&["--api-service-name=api", "--api-host=api.example.org,127.0.0.1"]).unwrap();
        let Certificates::Managed(own) = p.seed.api_certificates("ops") else { panic!("managed") };
        assert_eq!(
            own.hosts,
            ["api.ops.svc", "api.ops.svc.cluster.local", "localhost", "127.0.0.1", "api.example.org"]
        );
        let p = parse(&["--enable-api", "--api-tls-cert-dir=/certs"]).unwrap();
        p.seed.refuse_unavailable().unwrap();
        assert!(p.seed.enable_api);
        let Certificates::Files(TlsSource::Files { cert, key, .. }) = p.seed.api_certificates("ops") else {
            panic!("files")
        };
        assert_eq!((cert.to_str().unwrap(), key.to_str().unwrap()), ("/certs/tls.crt", "/certs/tls.key"));
        parse(&["--audit-dsn=postgres://audit@db/audit"]).unwrap().seed.refuse_unavailable().unwrap();
    }

    #[test]
    fn metrics_are_secure_by_default_with_a_generated_or_mounted_certificate() {
        let p = parse(&[]).unwrap();
        assert!(p.seed.metrics_secure, "the seed's default");
        assert!(matches!(p.seed.metrics_tls(vec!["a".into()]), TlsSource::SelfSigned(n) if n == ["a"]));
        let p = parse(&["--metrics-cert-path=/certs", "--metrics-cert-name=c.pem"]).unwrap();
        let TlsSource::Files { cert, key, .. } = p.seed.metrics_tls(vec![]) else { panic!("files") };
        assert_eq!((cert.to_str(), key.to_str()), (Some("/certs/c.pem"), Some("/certs/tls.key")));
        assert!(!parse(&["--metrics-secure=false"]).unwrap().seed.metrics_secure);
    }

    #[test]
    fn the_webhook_uses_mounted_files_or_its_own_certificates_for_its_service() {
        let p = parse(&["--enable-webhook", "--webhook-host=127.0.0.1"]).unwrap();
        assert!(p.seed.enable_webhook);
        let Certificates::Managed(own) = p.seed.webhook_certificates("ops") else { panic!("managed") };
        assert_eq!((own.purpose, own.secret.as_str()), ("webhook", "tsdb-operator-webhook-tls"));
        assert_eq!(own.publish, certificate::Publish::WebhookConfiguration("tsdb-operator".into()));
        assert_eq!(
            own.hosts,
            ["tsdb-operator-webhook.ops.svc", "tsdb-operator-webhook.ops.svc.cluster.local", "127.0.0.1"]
        );
        let p = parse(&["--webhook-cert-path=/certs"]).unwrap();
        let Certificates::Files(TlsSource::Files { cert, .. }) = p.seed.webhook_certificates("ops") else {
            panic!("files")
        };
        assert_eq!(cert.to_str(), Some("/certs/tls.crt"));
    }

    #[test]
    fn zap_flags_set_the_log_format_and_level() {
        let settings = |args: &[&str]| {
            let p = parse(args).unwrap();
            p.seed.log_settings(&p.log_format)
        };
        assert_eq!(settings(&[]), LogSettings { format: "text".into(), filter: DEFAULT_FILTER.into() });
        assert_eq!(settings(&["--log-format=json"]).format, "json");
        assert_eq!(settings(&["--log-format=json", "--zap-encoder=console"]).format, "text");
        assert!(settings(&["--zap-devel"]).filter.starts_with("debug"));
        assert!(settings(&["--zap-log-level=debug"]).filter.starts_with("debug"));
        assert!(settings(&["--zap-log-level=3"]).filter.starts_with("trace"));
        assert_eq!(settings(&["--zap-log-level=error"]).filter, "error");
        let err = parse(&["--zap-log-level=loud"]).unwrap_err().to_string();
        assert!(err.contains("--zap-log-level") && err.contains("verbosity number"), "{err}");
    }
}
