//! Image "pulling": maps a container image to a local program. Pure, except [`ImageMap::with_defaults`] which
//! looks up the cached Prometheus binaries.
//!
//! An [`ImageProgram`] describes what the image would contain: its `ENTRYPOINT` and `CMD`, its working
//! directory, its `VOLUME`s (fresh directories per container, like anonymous volumes) and the programs it
//! ships, by base name. The argv of a container follows Kubernetes: `command` replaces the entrypoint and drops
//! `CMD`, `args` replaces `CMD`. Its first element is then looked up among the image's programs by base name
//! (`/bin/prometheus` -> the cached Prometheus), else on the host (`/bin/sh`, `sleep`).
//!
//! An image may also be the real thing, unpacked ([`ImageProgram::unpacked`]): a root filesystem with the image's
//! `ENTRYPOINT`, `CMD`, `WORKDIR` and `USER`. Its containers run inside that filesystem (see `runtime`), their
//! programs found there and nowhere else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an image runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageProgram {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    workdir: Option<String>,
    volumes: Vec<String>,
    programs: BTreeMap<String, PathBuf>,
    /// The unpacked image's root filesystem and its `USER` as `(uid, gid)`.
    root: Option<(PathBuf, (u32, u32))>,
}

impl ImageProgram {
    /// An image whose entrypoint is the given local binary (known in the image under its base name).
    pub fn binary(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let name = base_name(&path.to_string_lossy()).to_owned();
        let mut programs = BTreeMap::new();
        programs.insert(name.clone(), path);
        Self { entrypoint: vec![name], programs, ..Self::default() }
    }

    /// An image with no entrypoint whose programs are the host's (like `busybox`: `command` is required, or
    /// `sh` runs).
    pub fn host() -> Self {
        Self { cmd: vec!["sh".to_owned()], ..Self::default() }
    }

    /// An unpacked image (e.g. `umoci unpack`): containers run inside `rootfs` as `user` (`(uid, gid)`, the
    /// image's `USER`) unless their securityContext says otherwise; set its entrypoint, `CMD` and working
    /// directory with the builder methods.
    pub fn unpacked(rootfs: impl Into<PathBuf>, user: (u32, u32)) -> Self {
        Self { root: Some((rootfs.into(), user)), ..Self::default() }
    }

    /// Sets the image's `ENTRYPOINT` (as the image knows it, e.g. `/bin/prometheus`).
    #[must_use]
    pub fn entrypoint(mut self, entrypoint: &[&str]) -> Self {
        self.entrypoint = entrypoint.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Sets the image's `CMD` (default arguments).
    #[must_use]
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// Sets the image's `WORKDIR`.
    #[must_use]
    pub fn workdir(mut self, dir: &str) -> Self {
        self.workdir = Some(dir.to_owned());
        self
    }

    /// Declares a `VOLUME`: a fresh directory per container is mounted there unless a pod volume covers it.
    #[must_use]
    pub fn volume(mut self, path: &str) -> Self {
        self.volumes.push(path.to_owned());
        self
    }

    /// Adds a program the image ships, known by its base name.
    #[must_use]
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.programs.insert(base_name(&path.to_string_lossy()).to_owned(), path);
        self
    }

    /// The working directory.
    pub(crate) fn work_dir(&self) -> Option<&str> {
        self.workdir.as_deref()
    }

    /// The `VOLUME`s.
    pub(crate) fn volumes(&self) -> &[String] {
        &self.volumes
    }

    /// The root filesystem and `USER` of an unpacked image.
    pub(crate) fn root(&self) -> Option<&(PathBuf, (u32, u32))> {
        self.root.as_ref()
    }

    /// The argv of a container (`command`, `args` after `$(VAR)` expansion), its first element resolved to a
    /// local program.
    pub(crate) fn argv(&self, command: &[String], args: &[String]) -> Result<(PathBuf, Vec<String>), String> {
        let mut words: Vec<String> = if command.is_empty() {
            let defaults = if args.is_empty() { &self.cmd } else { args };
            self.entrypoint.iter().chain(defaults).cloned().collect()
        } else {
            command.iter().chain(args).cloned().collect()
        };
        if words.is_empty() {
            return Err("no command specified: the image has no entrypoint and the container no command".to_owned());
        }
        let first = words.remove(0);
        if let Some((rootfs, _)) = &self.root {
            return find_in_root(rootfs, &first)
                .map(|path| (path, words))
                .ok_or_else(|| format!("executable file {first:?} not found in the image's filesystem"));
        }
        let program = if let Some(path) = self.programs.get(base_name(&first)) {
            path.clone()
        } else {
            find_on_host(&first)
                .ok_or_else(|| format!("executable file {first:?} not found in the image or on the host"))?
        };
        Ok((program, words))
    }
}

/// Why an image cannot run: the container stays `Waiting` with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageError {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// Image reference -> program rules; the first match wins, rules added with [`ImageMap::map_image`] before the
/// defaults.
#[derive(Debug, Clone, Default)]
pub struct ImageMap {
    rules: Vec<(String, ImageProgram)>,
    operator: Option<PathBuf>,
    prometheus: BTreeMap<u8, PathBuf>,
}

impl ImageMap {
    /// The defaults: Prometheus images (by major version of the tag) -> the cached Prometheus binaries (when
    /// present), `busybox`/`alpine`/`debian` -> host programs.
    pub fn with_defaults() -> Self {
        let mut map = Self::default();
        for major in [2u8, 3] {
            if let Some(path) = cached_prometheus(major) {
                map.prometheus.insert(major, path);
            }
        }
        map
    }

    /// Maps images starting with `prefix` (e.g. `ghcr.io/acme/app` or `ghcr.io/acme/app:v1`) to `program`.
    pub fn map_image(&mut self, prefix: &str, program: ImageProgram) {
        self.rules.push((prefix.to_owned(), program));
    }

    /// Maps images starting with `prefix` to `program`, before every earlier rule.
    pub fn map_image_first(&mut self, prefix: &str, program: ImageProgram) {
        self.rules.insert(0, (prefix.to_owned(), program));
    }

    /// The binary run for images whose repository ends in `tsdb-operator` or `tsdb-operator-rs`.
    pub fn set_operator_binary(&mut self, path: PathBuf) {
        self.operator = Some(path);
    }

    /// Overrides the Prometheus binary of a major version.
    pub fn set_prometheus(&mut self, major: u8, path: PathBuf) {
        self.prometheus.insert(major, path);
    }

    /// Resolves an image reference.
    pub(crate) fn resolve(&self, image: &str) -> Result<ImageProgram, ImageError> {
        if let Some((_, program)) = self.rules.iter().find(|(prefix, _)| image.starts_with(prefix.as_str())) {
            return Ok(program.clone());
        }
        let (repository, tag) = split_image(image);
        let short = repository.strip_prefix("docker.io/").unwrap_or(repository);
        let short = short.strip_prefix("library/").unwrap_or(short);
        if matches!(short, "prom/prometheus" | "quay.io/prometheus/prometheus") {
            let major = prometheus_major(tag);
            let path = self.prometheus.get(&major).ok_or_else(|| ImageError {
                reason: "ErrImagePull",
                message: format!(
                    "image {image:?}: Prometheus {major}.x is not installed (run scripts/install-deps.sh or set \
                     TSDB_PROMETHEUS{major}_BIN)"
                ),
            })?;
            return Ok(prometheus_image(path, major));
        }
        if matches!(short.rsplit('/').next(), Some("tsdb-operator" | "tsdb-operator-rs")) {
            let path = self.operator.clone().ok_or_else(|| ImageError {
                reason: "ErrImagePull",
                message: format!(
                    "image {image:?}: no tsdb-operator binary configured on the process kubelet \
                     (KubeletBuilder::operator_binary)"
                ),
            })?;
            return Ok(ImageProgram::binary(path).entrypoint(&["/tsdb-operator"]));
        }
        if matches!(short, "busybox" | "alpine" | "debian") {
            return Ok(ImageProgram::host());
        }
        Err(ImageError {
            reason: "ErrImagePull",
            message: format!(
                "image {image:?} is not mapped to a local program by the process kubelet \
                 (map it with KubeletBuilder::map_image)"
            ),
        })
    }
}

/// What the official Prometheus images declare.
fn prometheus_image(path: &Path, major: u8) -> ImageProgram {
    let mut cmd = vec!["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"];
    if major == 2 {
        cmd.extend([
            "--web.console.libraries=/usr/share/prometheus/console_libraries",
            "--web.console.templates=/usr/share/prometheus/consoles",
        ]);
    }
    let mut image = ImageProgram::binary(path)
        .entrypoint(&["/bin/prometheus"])
        .cmd(&cmd)
        .workdir("/prometheus")
        .volume("/prometheus");
    if let Some(promtool) = path.parent().map(|dir| dir.join("promtool")).filter(|p| p.exists()) {
        image = image.program(promtool);
    }
    image
}

/// `(repository, tag)`; the digest is dropped, a missing tag is `latest`.
fn split_image(image: &str) -> (&str, &str) {
    let image = image.split('@').next().unwrap_or(image);
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// `v2.53.3` -> 2; anything else (including `latest`) -> 3.
fn prometheus_major(tag: &str) -> u8 {
    if tag.trim_start_matches('v').starts_with("2.") { 2 } else { 3 }
}

/// Where a program named without a path is looked for, on the host and in an unpacked image.
const PATH: [&str; 6] = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn find_on_host(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| p.exists());
    }
    PATH.iter().map(|dir| Path::new(dir).join(program)).find(|p| p.exists())
}

/// A program of an unpacked image, as a path inside it: absolute, or found on the usual `PATH`.
fn find_in_root(rootfs: &Path, program: &str) -> Option<PathBuf> {
    let inside = |path: &str| rootfs.join(path.trim_start_matches('/')).is_file().then(|| PathBuf::from(path));
    if program.starts_with('/') {
        return inside(program);
    }
    PATH.iter().find_map(|dir| inside(&format!("{dir}/{program}")))
}

/// `$TSDB_PROMETHEUS{major}_BIN`, else `${TSDB_OPERATOR_CACHE:-~/.cache/tsdb-operator}/prometheus-{major}/prometheus`.
fn cached_prometheus(major: u8) -> Option<PathBuf> {
    let from_env = std::env::var(format!("TSDB_PROMETHEUS{major}_BIN")).ok().filter(|v| !v.is_empty());
    let path = from_env.map_or_else(
        || {
            let cache = std::env::var("TSDB_OPERATOR_CACHE").ok().filter(|v| !v.is_empty()).map_or_else(
                || {
                    Path::new(&std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned()))
                        .join(".cache/tsdb-operator")
                },
                PathBuf::from,
            );
            cache.join(format!("prometheus-{major}")).join("prometheus")
        },
        PathBuf::from,
    );
    path.exists().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ImageMap {
        let mut map = ImageMap::default();
        map.set_prometheus(2, PathBuf::from("/opt/p2/prometheus"));
        map.set_prometheus(3, PathBuf::from("/opt/p3/prometheus"));
        map.set_operator_binary(PathBuf::from("/work/target/debug/tsdb-operator"));
        map
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn prometheus_tags_select_the_major_version() {
        let map = map();
        let (program, _) = map.resolve("prom/prometheus:v2.53.3").unwrap().argv(&[], &[]).unwrap();
        assert_eq!(program, PathBuf::from("/opt/p2/prometheus"));
        let (program, _) = map.resolve("quay.io/prometheus/prometheus:v3.5.0").unwrap().argv(&[], &[]).unwrap();
        assert_eq!(program, PathBuf::from("/opt/p3/prometheus"));
    }

    #[test]
    fn args_replace_cmd_and_command_replaces_the_entrypoint() {
        let image = map().resolve("prom/prometheus:v3.5.0").unwrap();
        let (_, argv) = image.argv(&[], &[]).unwrap();
        assert_eq!(argv, s(&["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]));
        let (_, argv) = image.argv(&[], &s(&["--web.listen-address=:9091"])).unwrap();
        assert_eq!(argv, s(&["--web.listen-address=:9091"]));
        let (program, argv) = image.argv(&s(&["/bin/prometheus", "--a"]), &s(&["--b"])).unwrap();
        assert_eq!((program, argv), (PathBuf::from("/opt/p3/prometheus"), s(&["--a", "--b"])));
        let (program, argv) = image.argv(&s(&["sh", "-c"]), &s(&["exit 3"])).unwrap();
        assert!(program.ends_with("sh"));
        assert_eq!(argv, s(&["-c", "exit 3"]));
    }

    #[test]
    fn operator_images_map_to_the_configured_binary() {
        for name in ["ghcr.io/merlionos/tsdb-operator:0.1.0", "ghcr.io/merlionos/tsdb-operator-rs:0.1.0"] {
            let (program, _) = map().resolve(name).unwrap().argv(&[], &s(&["agent"])).unwrap();
            assert_eq!(program, PathBuf::from("/work/target/debug/tsdb-operator"));
        }
    }

    #[test]
    fn unknown_images_are_not_pulled() {
        let err = map().resolve("nginx:1.25").unwrap_err();
        assert_eq!(err.reason, "ErrImagePull");
        assert!(err.message.contains("map_image"), "{}", err.message);
    }

    #[test]
    fn unpacked_images_run_only_what_their_filesystem_holds() {
        let rootfs = std::env::temp_dir().join(format!("unpacked-image-{}", std::process::id()));
        std::fs::create_dir_all(rootfs.join("usr/local/bin")).unwrap();
        std::fs::write(rootfs.join("usr/local/bin/tsdb-operator"), b"").unwrap();
        let mut map = map();
        let image = ImageProgram::unpacked(&rootfs, (65532, 65532)).entrypoint(&["/usr/local/bin/tsdb-operator"]);
        map.map_image("ghcr.io/merlionos/tsdb-operator-rs:", image);
        let image = map.resolve("ghcr.io/merlionos/tsdb-operator-rs:0.1.0").unwrap();
        let (program, argv) = image.argv(&[], &s(&["agent"])).unwrap();
        assert_eq!((program, argv), (PathBuf::from("/usr/local/bin/tsdb-operator"), s(&["agent"])));
        let (program, _) = image.argv(&s(&["tsdb-operator"]), &[]).unwrap();
        assert_eq!(program, PathBuf::from("/usr/local/bin/tsdb-operator"), "found on PATH inside the image");
        let err = image.argv(&s(&["sh", "-c"]), &s(&["true"])).unwrap_err();
        assert!(err.contains("not found in the image"), "no host programs in an unpacked image: {err}");
        assert_eq!(image.root().map(|(_, user)| *user), Some((65532, 65532)));
        std::fs::remove_dir_all(&rootfs).unwrap();
    }

    #[test]
    fn custom_mappings_win_over_defaults() {
        let mut map = map();
        map.map_image("prom/prometheus:v2.53.3", ImageProgram::binary("/custom/prometheus"));
        let (program, _) = map.resolve("prom/prometheus:v2.53.3").unwrap().argv(&[], &[]).unwrap();
        assert_eq!(program, PathBuf::from("/custom/prometheus"));
    }
}
