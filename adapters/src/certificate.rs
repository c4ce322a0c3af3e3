//! The operator's own serving certificates, for installations without cert-manager: a small certificate
//! authority and a serving certificate signed by it, kept in one Secret that every replica shares, with the
//! authority published where clients read it: the `caBundle` of the ValidatingWebhookConfiguration (the API
//! server, for the webhook) or a ConfigMap (the REST API's callers, who must not need to read the Secret and its
//! key). When to renew is decided by [`tsdb_operator_core::certificates`]; this module reads and writes the
//! Secret, publishes the bundle and hands the current pair to the TLS server. I/O: the Kubernetes API.
//!
//! # Flow (each [`ManagedCertificate::sync`], every minute; [`ManagedCertificate::keep_current`] loops it)
//! 1. Read the Secret; load its serving pair when it changed (other replicas renew too).
//! 2. Decide: keep, renew the serving certificate, or renew the authority.
//! 3. A new authority is published (beside the previous one) before any certificate it signed is written, so no
//!    replica ever serves a certificate its clients do not trust yet.
//! 4. Write the Secret with optimistic concurrency: when two replicas renew at once, one write wins and the other
//!    replica loads it at its next pass.
//! 5. Keep the published bundle equal to the Secret's bundle.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tsdb_operator_core::certificates::{self, Issued, Renewal};

/// Secret keys.
mod keys {
    pub const CERT: &str = "tls.crt";
    pub const KEY: &str = "tls.key";
    pub const CA_CERT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const BUNDLE: &str = "ca-bundle.crt";
}

/// Annotations on the Secret that say what it holds.
mod annotations {
    pub const AUTHORITY_NOT_AFTER: &str = "observability.merlionos.org/ca-not-after";
    pub const SERVING_NOT_AFTER: &str = "observability.merlionos.org/serving-not-after";
    pub const HOSTS: &str = "observability.merlionos.org/serving-hosts";
}

/// Errors of the certificate manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("failed to {what}")]
    Api {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A certificate could not be made or read.
    #[error("certificate: {0}")]
    Certificate(String),
}

/// Where the certificates live, which names they carry and where their authority is published.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What the certificate serves, for the authority's name and log lines: `webhook` or `api`.
    pub purpose: &'static str,
    /// Namespace of the Secret (the operator's), and of a [`Publish::ConfigMap`].
    pub namespace: String,
    /// Name of the Secret.
    pub secret: String,
    /// Where the authority's bundle is kept current for clients.
    pub publish: Publish,
    /// DNS names and IP addresses of the serving certificate (the Service's names).
    pub hosts: Vec<String>,
}

/// Where clients read the bundle of authorities they trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publish {
    /// The `caBundle` of every webhook of this ValidatingWebhookConfiguration (read by the API server).
    WebhookConfiguration(String),
    /// The key [`CONFIGMAP_KEY`] of this ConfigMap in [`Settings::namespace`] (read by the REST API's callers).
    ConfigMap(String),
}

/// The key of the bundle in a [`Publish::ConfigMap`], as in the `kube-root-ca.crt` ConfigMap.
pub const CONFIGMAP_KEY: &str = "ca.crt";

/// The serving certificate for the TLS server, kept current by [`ManagedCertificate::sync`].
pub struct ManagedCertificate {
    client: kube::Client,
    settings: Settings,
    provider: Arc<CryptoProvider>,
    current: Mutex<Option<(String, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for ManagedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedCertificate").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ManagedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lock().as_ref().map(|(_, key)| key.clone())
    }
}

/// A new certificate set to write.
struct Minted {
    data: BTreeMap<String, String>,
    issued: Issued,
}

impl ManagedCertificate {
    /// A manager that has loaded nothing yet (the server refuses handshakes until the first [`Self::sync`]).
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Self {
            client,
            settings,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            current: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Arc<CertifiedKey>)>> {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The authority's common name: `tsdb-operator <purpose> CA`.
    fn authority_name(&self) -> String {
        format!("tsdb-operator {} CA", self.settings.purpose)
    }

    /// Whether a serving certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.lock().is_some()
    }

    /// Passes of [`Self::sync`] until `stop` completes: one at once, then one every `every` (every 5 seconds while
    /// no certificate is loaded, so that a server waiting for its first certificate is not kept waiting). A failed
    /// pass is logged; the pair loaded before stays served.
    pub async fn keep_current(self: Arc<Self>, every: Duration, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.sync(Timestamp::now()).await {
                tracing::warn!(error = %crate::error_chain(&e), purpose = self.settings.purpose,
                    secret = %self.settings.secret, "cannot keep the serving certificate current; retrying");
            }
            let pause = if self.is_loaded() { every } else { every.min(Duration::from_secs(5)) };
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One pass: read, renew when due, publish the bundle, load. See the [module documentation](self).
    pub async fn sync(&self, now: Timestamp) -> Result<(), Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let name = &self.settings.secret;
        let existing =
            secrets.get_opt(name).await.map_err(|source| Error::Api { what: format!("read Secret {name}"), source })?;
        let issued = existing.as_ref().and_then(read_issued);
        let renewal = certificates::decide_renewal(issued.as_ref(), &self.settings.hosts, now);
        let secret = match (renewal, existing) {
            (Renewal::Keep, Some(secret)) => secret,
            (_, existing) => {
                let old = existing.as_ref().map(string_data).unwrap_or_default();
                let minted = if renewal == Renewal::Authority || issued.is_none() {
                    // The authority that signed what is served now stays trusted: from the Secret, or, when the
                    // Secret was lost, from the bundle the configuration holds.
                    let previous = match old.get(keys::CA_CERT) {
                        Some(ca) => Some(ca.clone()),
                        None => self.published_bundle().await?,
                    };
                    mint_authority(&self.authority_name(), previous.as_deref(), &self.settings.hosts, now)?
                } else {
                    let until = issued.as_ref().map(|i| i.authority_not_after);
                    mint_serving(&self.authority_name(), &old, until, &self.settings.hosts, now)?
                };
                // The bundle first: nothing signed by a new authority is served before the API server trusts it.
                self.publish_bundle(&minted.data[keys::BUNDLE]).await?;
                match self.write(&secrets, existing, minted).await? {
                    Some(written) => {
                        tracing::info!(secret = %name, ?renewal, purpose = self.settings.purpose, "renewed the certificate");
                        written
                    }
                    // Another replica wrote first: put its bundle back at once (ours replaced it a moment ago)
                    // and serve its certificate.
                    None => secrets
                        .get(name)
                        .await
                        .map_err(|source| Error::Api { what: format!("read Secret {name}"), source })?,
                }
            }
        };
        let data = string_data(&secret);
        if let Some(bundle) = data.get(keys::BUNDLE) {
            self.publish_bundle(bundle).await?;
        }
        self.load(&secret, &data)
    }

    async fn write(
        &self,
        secrets: &Api<Secret>,
        existing: Option<Secret>,
        minted: Minted,
    ) -> Result<Option<Secret>, Error> {
        let mut secret = existing.unwrap_or_else(|| Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(self.settings.secret.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            ..Secret::default()
        });
        let marks = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
        marks.insert(annotations::AUTHORITY_NOT_AFTER.to_owned(), minted.issued.authority_not_after.to_string());
        marks.insert(annotations::SERVING_NOT_AFTER.to_owned(), minted.issued.serving_not_after.to_string());
        marks.insert(annotations::HOSTS.to_owned(), minted.issued.hosts.join(","));
        secret.data = Some(minted.data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect());
        secret.string_data = None;
        let written = if secret.metadata.resource_version.is_some() {
            secrets.replace(&self.settings.secret, &PostParams::default(), &secret).await
        } else {
            secrets.create(&PostParams::default(), &secret).await
        };
        match written {
            Ok(s) => Ok(Some(s)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(source) => Err(Error::Api { what: format!("write Secret {}", self.settings.secret), source }),
        }
    }

    /// The first authority of the published bundle, if there is one.
    async fn published_bundle(&self) -> Result<Option<String>, Error> {
        let published = match &self.settings.publish {
            Publish::WebhookConfiguration(name) => {
                let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
                let config = api.get_opt(name).await.map_err(|source| Error::Api {
                    what: format!("read ValidatingWebhookConfiguration {name}"),
                    source,
                })?;
                config
                    .and_then(|c| c.webhooks?.into_iter().find_map(|w| w.client_config.ca_bundle))
                    .and_then(|b| String::from_utf8(b.0).ok())
            }
            Publish::ConfigMap(name) => self
                .config_maps()
                .get_opt(name)
                .await
                .map_err(|source| Error::Api { what: format!("read ConfigMap {name}"), source })?
                .and_then(|c| c.data?.remove(CONFIGMAP_KEY)),
        };
        Ok(published.and_then(|b| first_certificate(&b)))
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// Publishes `bundle` where its clients read it, when it is not there yet.
    async fn publish_bundle(&self, bundle: &str) -> Result<(), Error> {
        match &self.settings.publish {
            Publish::WebhookConfiguration(name) => self.publish_in_configuration(name, bundle).await,
            Publish::ConfigMap(name) => self.publish_in_config_map(name, bundle).await,
        }
    }

    /// Puts `bundle` into every webhook of the configuration whose `caBundle` differs. A configuration that does
    /// not exist (yet) is left to whoever installs it; the next pass tries again.
    async fn publish_in_configuration(&self, name: &str, bundle: &str) -> Result<(), Error> {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(config) = api
            .get_opt(name)
            .await
            .map_err(|source| Error::Api { what: format!("read ValidatingWebhookConfiguration {name}"), source })?
        else {
            tracing::debug!(configuration = %name, "no ValidatingWebhookConfiguration to put the CA bundle in");
            return Ok(());
        };
        let encoded = serde_json::to_value(ByteString(bundle.as_bytes().to_vec()))
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let mut ops = Vec::new();
        for (i, hook) in config.webhooks.iter().flatten().enumerate() {
            if hook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(bundle.as_bytes()) {
                ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                    "value": encoded}));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).map_err(|e| Error::Certificate(e.to_string()))?;
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(|source| Error::Api { what: format!("patch the caBundle of {name}"), source })?;
        tracing::info!(configuration = %name, "put the webhook CA bundle into the configuration");
        Ok(())
    }

    /// Creates the ConfigMap with `bundle`, or replaces a different bundle in it (optimistically: a conflict is
    /// left to the next pass, which reads the winner's Secret).
    async fn publish_in_config_map(&self, name: &str, bundle: &str) -> Result<(), Error> {
        let api = self.config_maps();
        let existing =
            api.get_opt(name).await.map_err(|source| Error::Api { what: format!("read ConfigMap {name}"), source })?;
        let written = match existing {
            Some(c) if c.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)).map(String::as_str) == Some(bundle) => {
                return Ok(());
            }
            Some(mut c) => {
                c.data.get_or_insert_with(BTreeMap::new).insert(CONFIGMAP_KEY.to_owned(), bundle.to_owned());
                api.replace(name, &PostParams::default(), &c).await
            }
            None => {
                let c = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "tsdb-operator".to_owned(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(CONFIGMAP_KEY.to_owned(), bundle.to_owned())])),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &c).await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(configmap = %name, purpose = self.settings.purpose, "published the CA bundle");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(source) => Err(Error::Api { what: format!("write ConfigMap {name}"), source }),
        }
    }

    fn load(&self, secret: &Secret, data: &BTreeMap<String, String>) -> Result<(), Error> {
        let version = secret.metadata.resource_version.clone().unwrap_or_default();
        if self.lock().as_ref().is_some_and(|(v, _)| *v == version) {
            return Ok(());
        }
        let (Some(cert), Some(key)) = (data.get(keys::CERT), data.get(keys::KEY)) else {
            return Err(Error::Certificate(format!(
                "Secret {} has no {} and {}",
                self.settings.secret,
                keys::CERT,
                keys::KEY
            )));
        };
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate(format!("{}: {e}", keys::CERT)))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|e| Error::Certificate(format!("{}: {e}", keys::KEY)))?;
        let signing =
            self.provider.key_provider.load_private_key(key).map_err(|e| Error::Certificate(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        *self.lock() = Some((version, Arc::new(certified)));
        tracing::info!(secret = %self.settings.secret, purpose = self.settings.purpose, "loaded the serving certificate");
        Ok(())
    }
}

fn string_data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|v| (k.clone(), v)))
        .collect()
}

/// What the Secret's annotations say it holds; `None` when any of it is missing or unreadable (it is renewed).
fn read_issued(secret: &Secret) -> Option<Issued> {
    let marks = secret.metadata.annotations.as_ref()?;
    let data = string_data(secret);
    if [keys::CERT, keys::KEY, keys::CA_CERT, keys::CA_KEY, keys::BUNDLE].iter().any(|k| !data.contains_key(*k)) {
        return None;
    }
    Some(Issued {
        authority_not_after: marks.get(annotations::AUTHORITY_NOT_AFTER)?.parse().ok()?,
        serving_not_after: marks.get(annotations::SERVING_NOT_AFTER)?.parse().ok()?,
        hosts: marks.get(annotations::HOSTS)?.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect(),
    })
}

/// `t` cut to its UTC day, as the certificates carry it: the day's start, and the day for rcgen.
fn day(t: Timestamp) -> (Timestamp, (i32, u8, u8)) {
    let date = t.to_zoned(TimeZone::UTC).date();
    let midnight = date.to_zoned(TimeZone::UTC).map_or(t, |z| z.timestamp());
    let month = u8::try_from(date.month()).unwrap_or(1);
    let d = u8::try_from(date.day()).unwrap_or(1);
    (midnight, (i32::from(date.year()), month, d))
}

/// Sets the validity of `params` from `from` to `until` (whole UTC days).
fn valid(params: &mut CertificateParams, from: (i32, u8, u8), until: (i32, u8, u8)) {
    params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
}

fn authority_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Certificate(e.to_string())
}

/// The first PEM certificate of `bundle`.
fn first_certificate(bundle: &str) -> Option<String> {
    let end = "-----END CERTIFICATE-----";
    let start = bundle.find("-----BEGIN CERTIFICATE-----")?;
    let stop = bundle[start..].find(end)? + start + end.len();
    Some(format!("{}\n", &bundle[start..stop]))
}

/// A new authority, with the `previous` one (if any) kept in the bundle, and a serving certificate from it.
fn mint_authority(name: &str, previous: Option<&str>, hosts: &[String], now: Timestamp) -> Result<Minted, Error> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = authority_params(name);
    let (_, not_before) = day(now.checked_sub(std::time::Duration::from_hours(24)).unwrap_or(now));
    let (authority_not_after, until) = day(now.checked_add(certificates::AUTHORITY_LIFETIME).unwrap_or(now));
    valid(&mut params, not_before, until);
    let ca = params.self_signed(&key).map_err(err)?;
    let mut bundle = ca.pem();
    if let Some(previous) = previous {
        bundle.push_str(previous);
    }
    let mut data = BTreeMap::from([
        (keys::CA_CERT.to_owned(), ca.pem()),
        (keys::CA_KEY.to_owned(), key.serialize_pem()),
        (keys::BUNDLE.to_owned(), bundle),
    ]);
    let serving_not_after = serve(&mut data, (name, &key), hosts, authority_not_after, now)?;
    Ok(Minted { data, issued: Issued { authority_not_after, serving_not_after, hosts: hosts.to_vec() } })
}

/// A new serving certificate from the authority in `old`.
fn mint_serving(
    name: &str,
    old: &BTreeMap<String, String>,
    authority_not_after: Option<Timestamp>,
    hosts: &[String],
    now: Timestamp,
) -> Result<Minted, Error> {
    let (Some(ca_key), Some(authority_not_after)) = (old.get(keys::CA_KEY), authority_not_after) else {
        return mint_authority(name, old.get(keys::CA_CERT).map(String::as_str), hosts, now);
    };
    let key = KeyPair::from_pem(ca_key).map_err(err)?;
    let mut data: BTreeMap<String, String> = old
        .iter()
        .filter(|(k, _)| [keys::CA_CERT, keys::CA_KEY, keys::BUNDLE].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let serving_not_after = serve(&mut data, (name, &key), hosts, authority_not_after, now)?;
    Ok(Minted { data, issued: Issued { authority_not_after, serving_not_after, hosts: hosts.to_vec() } })
}

/// Issues the serving certificate into `data` from the authority (its name and key); returns when it expires.
fn serve(
    data: &mut BTreeMap<String, String>,
    (authority_name, authority_key): (&str, &KeyPair),
    hosts: &[String],
    authority_not_after: Timestamp,
    now: Timestamp,
) -> Result<Timestamp, Error> {
    let issuer = Issuer::new(authority_params(authority_name), authority_key);
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, hosts.first().map_or("tsdb-operator", String::as_str));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let (_, not_before) = day(now.checked_sub(std::time::Duration::from_hours(24)).unwrap_or(now));
    let (not_after, until) = day(certificates::serving_not_after(authority_not_after, now));
    valid(&mut params, not_before, until);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    data.insert(keys::CERT.to_owned(), cert.pem());
    data.insert(keys::KEY.to_owned(), key.serialize_pem());
    Ok(not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "tsdb-operator webhook CA";

    fn hosts() -> Vec<String> {
        vec!["tsdb-operator-webhook.ops.svc".to_owned(), "127.0.0.1".to_owned()]
    }

    /// Verifies `cert` against the roots in `bundle` for `host`, as the API server does.
    fn verify(bundle: &str, cert: &str, host: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes()).map(Result::unwrap).collect();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        rustls::client::danger::ServerCertVerifier::verify_server_cert(
            &*verifier,
            &chain[0],
            &chain[1..],
            &name,
            &[],
            now,
        )
        .map(|_| ())
    }

    #[test]
    fn a_minted_serving_certificate_is_trusted_through_the_bundle_for_its_names_only() {
        let now = Timestamp::now();
        let minted = mint_authority(NAME, None, &hosts(), now).unwrap();
        let (bundle, cert) = (&minted.data[keys::BUNDLE], &minted.data[keys::CERT]);
        verify(bundle, cert, "tsdb-operator-webhook.ops.svc").unwrap();
        verify(bundle, cert, "127.0.0.1").unwrap();
        assert!(verify(bundle, cert, "elsewhere.example").is_err());
        assert!(minted.issued.serving_not_after <= minted.issued.authority_not_after);

        // A renewed serving certificate comes from the same authority: the published bundle still trusts it.
        let renewed = mint_serving(NAME, &minted.data, Some(minted.issued.authority_not_after), &hosts(), now).unwrap();
        assert_eq!(renewed.data[keys::CA_CERT], minted.data[keys::CA_CERT]);
        assert_ne!(renewed.data[keys::CERT], minted.data[keys::CERT]);
        verify(bundle, &renewed.data[keys::CERT], "127.0.0.1").unwrap();

        // A new authority keeps the previous one in the bundle, so certificates of both are trusted meanwhile.
        let rotated = mint_authority(NAME, Some(&renewed.data[keys::CA_CERT]), &hosts(), now).unwrap();
        assert_eq!(first_certificate(bundle).as_ref(), Some(&minted.data[keys::CA_CERT]));
        verify(&rotated.data[keys::BUNDLE], &renewed.data[keys::CERT], "127.0.0.1").unwrap();
        verify(&rotated.data[keys::BUNDLE], &rotated.data[keys::CERT], "127.0.0.1").unwrap();
        assert!(verify(bundle, &rotated.data[keys::CERT], "127.0.0.1").is_err(), "new authority, new trust");
    }

    #[test]
    fn a_secret_missing_anything_is_renewed() {
        let minted = mint_authority(NAME, None, &hosts(), Timestamp::now()).unwrap();
        let mut secret = Secret {
            data: Some(minted.data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect()),
            ..Secret::default()
        };
        assert_eq!(read_issued(&secret), None, "no annotations");
        secret.metadata.annotations = Some(BTreeMap::from([
            (annotations::AUTHORITY_NOT_AFTER.to_owned(), minted.issued.authority_not_after.to_string()),
            (annotations::SERVING_NOT_AFTER.to_owned(), minted.issued.serving_not_after.to_string()),
            (annotations::HOSTS.to_owned(), hosts().join(",")),
        ]));
        assert_eq!(read_issued(&secret), Some(minted.issued.clone()));
        secret.data.as_mut().unwrap().remove(keys::CA_KEY);
        assert_eq!(read_issued(&secret), None);
    }
}
