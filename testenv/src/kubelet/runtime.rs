//! The "container runtime": starts a container as a local process in the pod's network namespace and in a
//! private mount namespace with the pod's volumes bind-mounted at their mount paths; sends signals to it; and
//! the watchdog that removes everything if the owning process dies. Does I/O.
//!
//! # Flow of one container start
//! `ip netns exec tsdb-I-S unshare --uts /bin/sh -c SCRIPT container PROGRAM ARGS...`
//! (`unshare --mount --propagation slave` instead of `ip netns exec` for `hostNetwork` pods). `ip netns exec`
//! and `unshare` replace themselves with the next program, so the child's PID is the container's PID. The
//! script sets the hostname, creates the mount points, bind-mounts the volumes (read-only ones are remounted
//! `ro`), changes to the working directory and `exec`s the program. The container is the leader of its own
//! process group, so signals reach everything it started, and its stdout and stderr go to a log file.
//!
//! A container of an unpacked image runs inside the image's root filesystem: the script creates the mount points
//! there, makes that filesystem read-only for the container when its securityContext asks, mounts the volumes,
//! `/proc` and `/dev` into it and `exec`s `nsenter --root --wd --setuid --setgid` with the program's path inside
//! the image. All mounts stay in the container's own mount namespace; the unpacked files are shared.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::{Error, Result};

/// A directory (or file) of the host bind-mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindMount {
    pub(crate) source: PathBuf,
    pub(crate) target: String,
    pub(crate) read_only: bool,
}

/// Everything needed to start one container process.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) workdir: Option<String>,
    /// `None` for `hostNetwork` pods.
    pub(crate) netns: Option<String>,
    pub(crate) hostname: String,
    pub(crate) mounts: Vec<BindMount>,
    pub(crate) log_path: PathBuf,
    /// An unpacked image's root filesystem, the container's user in it and whether it is read-only.
    pub(crate) root: Option<Root>,
}

/// How a container of an unpacked image runs in its filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Root {
    pub(crate) rootfs: PathBuf,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) read_only: bool,
}

/// Quotes a string for `sh`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script run by `sh -c` before `exec`ing the program (which it gets as `"$@"`).
pub(crate) fn build_script(spec: &LaunchSpec) -> String {
    let mut script = String::from("set -e\n");
    if spec.netns.is_some() {
        let _ = writeln!(script, "hostname {}", sh_quote(&spec.hostname));
    }
    // Inside an unpacked image every mount point is under its root; the points are made before that root turns
    // read-only.
    let under_root = |target: &str| match &spec.root {
        Some(root) => format!("{}/{}", root.rootfs.display(), target.trim_start_matches('/')),
        None => target.to_owned(),
    };
    for mount in &spec.mounts {
        let target = sh_quote(&under_root(&mount.target));
        if mount.source.is_dir() {
            let _ = writeln!(script, "mkdir -p {target}");
        } else {
            let _ = writeln!(script, "mkdir -p \"$(dirname {target})\"; [ -e {target} ] || touch {target}");
        }
    }
    if let Some(root) = &spec.root {
        let rootfs = sh_quote(&root.rootfs.to_string_lossy());
        let (proc, dev) = (sh_quote(&under_root("/proc")), sh_quote(&under_root("/dev")));
        let _ = writeln!(script, "mkdir -p {proc} {dev}");
        if root.read_only {
            let _ = writeln!(script, "mount --bind {rootfs} {rootfs}\nmount -o remount,bind,ro {rootfs}");
        }
        let _ = writeln!(script, "mount -t proc proc {proc}\nmount --rbind /dev {dev}");
    }
    for mount in &spec.mounts {
        let target = sh_quote(&under_root(&mount.target));
        let source = sh_quote(&mount.source.to_string_lossy());
        let _ = writeln!(script, "mount --bind {source} {target}");
        if mount.read_only {
            let _ = writeln!(script, "mount -o remount,bind,ro {target}");
        }
    }
    if spec.root.is_none() {
        match &spec.workdir {
            Some(dir) => {
                let _ = writeln!(script, "mkdir -p {0}; cd {0}", sh_quote(dir));
            }
            None => script.push_str("cd /\n"),
        }
    }
    script.push_str("exec \"$@\"\n");
    script
}

/// The program and arguments the script `exec`s: the container's own, or for an unpacked image `nsenter`
/// entering its root as the container's user.
fn exec_argv(spec: &LaunchSpec) -> (PathBuf, Vec<String>) {
    let Some(root) = &spec.root else { return (spec.program.clone(), spec.args.clone()) };
    let workdir = spec.workdir.as_deref().unwrap_or("/").trim_start_matches('/');
    let mut args = vec![
        format!("--root={}", root.rootfs.display()),
        format!("--wd={}", root.rootfs.join(workdir).display()),
        format!("--setgid={}", root.gid),
        format!("--setuid={}", root.uid),
        "--".to_owned(),
        spec.program.display().to_string(),
    ];
    args.extend(spec.args.iter().cloned());
    (PathBuf::from("nsenter"), args)
}

/// Starts the container process.
pub(crate) fn spawn(spec: &LaunchSpec) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|source| Error::Io { action: "open", path: spec.log_path.clone(), source })?;
    let log_err =
        log.try_clone().map_err(|source| Error::Io { action: "open", path: spec.log_path.clone(), source })?;
    let script = build_script(spec);
    let (program, args) = exec_argv(spec);
    let mut command = if let Some(ns) = &spec.netns {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, "unshare", "--uts", "/bin/sh", "-c"]);
        command
    } else {
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "slave", "/bin/sh", "-c"]);
        command
    };
    command
        .arg(&script)
        .arg("container")
        .arg(&program)
        .args(&args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(true);
    command.spawn().map_err(|source| Error::Spawn { command: spec.program.display().to_string(), source })
}

/// Sends a signal to a container's process group.
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pgid).map_err(|_| Error::Signal { pgid, signal: signal.as_str() })?;
    killpg(Pid::from_raw(raw), signal).map_err(|_| Error::Signal { pgid, signal: signal.as_str() })
}

/// Whether a process exists (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// The directory where the kubelet records the process group of every running container, for the watchdog.
pub(crate) fn pgid_dir(index: u8) -> PathBuf {
    Path::new(super::network::RUN_DIR).join(format!("{index}.pgids"))
}

/// Records a running container's process group for the watchdog.
pub(crate) fn record_pgid(index: u8, pgid: u32) {
    let _ = std::fs::write(pgid_dir(index).join(pgid.to_string()), b"");
}

/// Forgets a container's process group.
pub(crate) fn forget_pgid(index: u8, pgid: u32) {
    let _ = std::fs::remove_file(pgid_dir(index).join(pgid.to_string()));
}

/// Starts the watchdog: a shell loop in its own process group that polls the owner's PID every second and,
/// once the owner is gone, kills every recorded container process group and every process in this instance's
/// namespaces, deletes the namespaces, the bridge and the lock file, and (if `remove_dir` is given) the
/// state directory. It keeps no file descriptor of the owner open.
pub(crate) fn spawn_watchdog(index: u8, remove_dir: Option<&Path>) -> Result<std::process::Child> {
    let pgids = sh_quote(&pgid_dir(index).to_string_lossy());
    let lock = sh_quote(&Path::new(super::network::RUN_DIR).join(format!("{index}.pid")).to_string_lossy());
    let remove_dir = remove_dir.map(|d| sh_quote(&d.to_string_lossy())).unwrap_or_default();
    let owner = std::process::id();
    let script = format!(
        "while kill -0 {owner} 2>/dev/null; do sleep 1; done\n\
         for f in {pgids}/*; do [ -e \"$f\" ] && kill -9 -- -\"$(basename \"$f\")\" 2>/dev/null; done\n\
         for ns in $(ip netns list | cut -d' ' -f1 | grep '^tsdb-{index}-'); do\n\
           p=$(ip netns pids \"$ns\"); [ -n \"$p\" ] && kill -9 $p; ip netns del \"$ns\"; done\n\
         for l in $(ip -o link show | cut -d: -f2 | cut -d@ -f1 | grep '^ *tsv{index}h'); do ip link del $l; done\n\
         ip link del tsdbbr{index} 2>/dev/null\n\
         rm -rf {pgids} {lock} {remove_dir}\n"
    );
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn { command: "watchdog".to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_mounts_volumes_read_only_and_execs_the_program() {
        let dir = std::env::temp_dir();
        let spec = LaunchSpec {
            program: PathBuf::from("/bin/true"),
            args: vec![],
            env: vec![],
            workdir: Some("/prometheus".to_owned()),
            netns: Some("tsdb-0-2".to_owned()),
            hostname: "web-0".to_owned(),
            mounts: vec![BindMount { source: dir.clone(), target: "/etc/it's".to_owned(), read_only: true }],
            log_path: PathBuf::from("/dev/null"),
            root: None,
        };
        let script = build_script(&spec);
        assert!(script.contains("hostname 'web-0'"));
        assert!(script.contains(r"mkdir -p '/etc/it'\''s'"));
        assert!(script.contains("mount -o remount,bind,ro '/etc/it'\\''s'"));
        assert!(script.contains("cd '/prometheus'"));
        assert!(script.ends_with("exec \"$@\"\n"));
        assert_eq!(exec_argv(&spec).0, PathBuf::from("/bin/true"));
    }

    #[test]
    fn an_unpacked_image_runs_in_its_read_only_root_as_its_user() {
        let dir = std::env::temp_dir();
        let spec = LaunchSpec {
            program: PathBuf::from("/usr/local/bin/tsdb-operator"),
            args: vec!["operator".to_owned()],
            env: vec![],
            workdir: Some("/tmp".to_owned()),
            netns: Some("tsdb-0-2".to_owned()),
            hostname: "op-0".to_owned(),
            mounts: vec![BindMount { source: dir, target: "/var/lib/data".to_owned(), read_only: false }],
            log_path: PathBuf::from("/dev/null"),
            root: Some(Root { rootfs: PathBuf::from("/images/op"), uid: 65532, gid: 65532, read_only: true }),
        };
        let script = build_script(&spec);
        let at = |needle: &str| script.find(needle).unwrap_or_else(|| panic!("{needle} in {script}"));
        // Mount points first, then the root turns read-only, then the volumes go on top.
        assert!(at("mkdir -p '/images/op/var/lib/data'") < at("mount -o remount,bind,ro '/images/op'"));
        assert!(at("mount -o remount,bind,ro '/images/op'") < at("mount --bind '/tmp' '/images/op/var/lib/data'"));
        assert!(script.contains("mount -t proc proc '/images/op/proc'"));
        assert!(!script.contains("cd "), "nsenter sets the working directory: {script}");
        let (program, args) = exec_argv(&spec);
        assert_eq!(program, PathBuf::from("nsenter"));
        assert_eq!(
            args,
            [
                "--root=/images/op",
                "--wd=/images/op/tmp",
                "--setgid=65532",
                "--setuid=65532",
                "--",
                "/usr/local/bin/tsdb-operator",
                "operator"
            ]
        );
    }
}
