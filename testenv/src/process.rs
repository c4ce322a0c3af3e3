//! Process supervision for the test environment: every process a test starts is stopped, even when the test
//! binary is killed or the value owning it is a never-dropped `static`. Does I/O (spawns processes, writes
//! files).
//!
//! # Flow
//! A [`Workdir`] is a fresh directory for one environment (logs, configs, data). It starts a janitor script
//! (`scripts/janitor.sh`) that removes the directory once the `Workdir` is dropped or the test process is gone.
//!
//! [`ProcessBuilder::spawn`] starts `bash scripts/supervise.sh LOG GRACE MARKERS -- PROGRAM ARGS...` in a new
//! process group. The supervisor starts PROGRAM, reports its PID, and holds the read end of a pipe whose write
//! end lives only in this process ([`Supervised`] keeps it). When this process exits for any reason the
//! kernel closes the write end, the supervisor reads EOF, stops PROGRAM (SIGTERM, then SIGKILL after the
//! grace period) and kills its process group.
//!
//! # Guarantees
//! - No `unsafe`, no `pre_exec`: the lifeline is a plain pipe, so it also works when the test binary is
//!   killed with SIGKILL.
//! - [`Supervised::stop`] (and `Drop`) stop PROGRAM, wait for it, and kill whatever is left in its process
//!   group.
//! - PROGRAM's stdout and stderr go to a log file in the workdir; startup errors carry the log's tail
//!   ([`Supervised::log_tail`]).
//! - With `TSDB_TESTENV_KEEP=1` the workdir is kept (its path is printed) so logs can be read after a run.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const SUPERVISE_SH: &str = include_str!("../scripts/supervise.sh");
const JANITOR_SH: &str = include_str!("../scripts/janitor.sh");

/// Environment variable that keeps workdirs after the run when set to `1`.
pub const KEEP_ENV: &str = "TSDB_TESTENV_KEEP";
/// Environment variable naming the parent directory of workdirs (default: the system temp dir).
pub const TMPDIR_ENV: &str = "TSDB_TESTENV_TMPDIR";

/// A fresh directory for one test environment, removed when dropped or when the test process is gone.
#[derive(Debug)]
pub struct Workdir {
    root: PathBuf,
    janitor: Mutex<Option<(Child, ChildStdin)>>,
    cleanup_list: Mutex<()>,
}

impl Workdir {
    /// Creates `$TSDB_TESTENV_TMPDIR` (or the temp dir) `/tsdb-testenv-<label>-<pid>-<random>` with the
    /// supervisor scripts in it, and starts its janitor.
    pub fn create(label: &str) -> Result<Self> {
        let parent =
            std::env::var_os(TMPDIR_ENV).filter(|v| !v.is_empty()).map_or_else(std::env::temp_dir, PathBuf::from);
        sweep_stale(&parent);
        sweep_stale(Path::new("/dev/shm"));
        let root = parent.join(format!("tsdb-testenv-{}-{}-{}", sanitize(label), std::process::id(), random_hex(4)));
        fs::create_dir_all(root.join("run")).with_context(|| format!("failed to create {}", root.display()))?;
        fs::create_dir_all(root.join("logs"))?;
        fs::create_dir_all(root.join("bin"))?;
        fs::write(root.join("bin").join("supervise.sh"), SUPERVISE_SH)?;
        fs::write(root.join("bin").join("janitor.sh"), JANITOR_SH)?;

        let janitor = if keep_workdirs() {
            eprintln!("tsdb-testenv: {KEEP_ENV}=1, keeping {}", root.display());
            None
        } else {
            let mut child = Command::new("bash")
                .arg(root.join("bin").join("janitor.sh"))
                .arg(&root)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("failed to start the workdir janitor (bash)")?;
            let stdin = child.stdin.take().ok_or_else(|| anyhow!("janitor has no stdin pipe"))?;
            Some((child, stdin))
        };
        Ok(Self { root, janitor: Mutex::new(janitor), cleanup_list: Mutex::new(()) })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Directory of the log files.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Creates a fresh subdirectory `name` of the workdir.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(dir)
    }

    /// Creates a fresh directory in memory (`/dev/shm`) when that is writable, else a subdirectory of the
    /// workdir. Either way it is removed together with the workdir.
    pub fn fast_subdir(&self, name: &str) -> Result<PathBuf> {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let file_name = self.root.file_name().map(OsStr::to_string_lossy).unwrap_or_default();
            let dir = shm.join(format!("{file_name}-{}", sanitize(name)));
            if fs::create_dir(&dir).is_ok() {
                self.register_cleanup(&dir)?;
                return Ok(dir);
            }
        }
        self.subdir(name)
    }

    /// Removes `path` together with the workdir. Only paths under the workdir or named `tsdb-testenv-*` are
    /// accepted, so a mistake can never remove anything else.
    pub fn register_cleanup(&self, path: &Path) -> Result<()> {
        let named_ours = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tsdb-testenv-"));
        if !(path.starts_with(&self.root) || named_ours) || !path.is_absolute() {
            bail!("refusing to register {} for cleanup: not a testenv path", path.display());
        }
        let _guard = self.cleanup_list.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = OpenOptions::new().create(true).append(true).open(self.root.join("cleanup"))?;
        writeln!(file, "{}", path.display())?;
        Ok(())
    }

    fn marker_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    fn supervisor_script(&self) -> PathBuf {
        self.root.join("bin").join("supervise.sh")
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let janitor = self.janitor.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some((mut child, stdin)) = janitor {
            // EOF tells the janitor to clean up; it waits (at most 60 s) for supervisors that are still
            // stopping, for example processes whose owner outlives this workdir. Usually it is done at once;
            // otherwise it finishes in the background.
            drop(stdin);
            let _ = wait_timeout(&mut child, Duration::from_secs(5));
        }
    }
}

/// Removes `tsdb-testenv-*` entries of `parent` left behind by test processes that are gone (a janitor that
/// was itself killed, or a workdir removed by hand without its `/dev/shm` part). Only entries whose owner PID
/// (part of the name) no longer exists and that have not changed for two minutes are touched.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("tsdb-testenv-")).and_then(owner_pid) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_mins(2));
        if idle && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The owner PID in `<label>-<pid>-<8 hex>[-<suffix>]`.
fn owner_pid(rest: &str) -> Option<u32> {
    let tokens: Vec<&str> = rest.split('-').collect();
    tokens.windows(2).find_map(|w| {
        let is_hex = w[1].len() == 8 && w[1].bytes().all(|b| b.is_ascii_hexdigit());
        if is_hex { w[0].parse().ok() } else { None }
    })
}

/// How to start one supervised process.
#[derive(Debug, Clone)]
pub struct ProcessBuilder {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    log_file: Option<PathBuf>,
    grace: Duration,
}

impl ProcessBuilder {
    /// A process called `name` (used for its log file `logs/<name>.log` and in errors) running `program`.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            log_file: None,
            grace: Duration::from_secs(10),
        }
    }

    /// Adds an argument.
    #[must_use]
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable (the rest is inherited).
    #[must_use]
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Working directory (default: the workdir).
    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Log file (default: `<workdir>/logs/<name>.log`). Appended to, so restarts keep earlier output.
    #[must_use]
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Time between SIGTERM and SIGKILL when stopping (default 10 s; whole seconds, at least 1).
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The name given to [`ProcessBuilder::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the process under a supervisor. Returns once the process has been started (not once it is
    /// ready: poll for readiness and use [`Supervised::check_running`] to fail fast).
    pub fn spawn(&self, workdir: &Workdir) -> Result<Supervised> {
        let log = self.log_file.clone().unwrap_or_else(|| workdir.logs().join(format!("{}.log", sanitize(&self.name))));
        let mut header = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("failed to open log file {}", log.display()))?;
        let mut line = format!("--- tsdb-testenv: starting {}", self.program.display());
        for arg in &self.args {
            let _ = write!(line, " {}", arg.to_string_lossy());
        }
        writeln!(header, "{line}")?;
        let stderr = header.try_clone()?;

        let grace_secs = self.grace.as_secs().max(1);
        let mut command = Command::new("bash");
        command
            .arg(workdir.supervisor_script())
            .arg(&log)
            .arg(grace_secs.to_string())
            .arg(workdir.marker_dir())
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(self.current_dir.as_deref().unwrap_or(workdir.path()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let mut supervisor =
            command.spawn().with_context(|| format!("failed to start the supervisor of {} (bash)", self.name))?;
        let lifeline = supervisor.stdin.take().ok_or_else(|| anyhow!("supervisor has no stdin pipe"))?;
        let stdout = supervisor.stdout.take().ok_or_else(|| anyhow!("supervisor has no stdout pipe"))?;
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first)?;
        let pid = first.trim().parse::<i32>().ok().filter(|p| *p > 0).map(Pid::from_raw);
        let Some(pid) = pid else {
            let status = supervisor.wait()?;
            bail!("supervisor of {} failed ({status}); log {}:\n{}", self.name, log.display(), tail_of(&log, 30));
        };
        let group = Pid::from_raw(i32::try_from(supervisor.id())?);
        Ok(Supervised {
            name: self.name.clone(),
            pid,
            group,
            supervisor,
            lifeline: Some(lifeline),
            log,
            grace: Duration::from_secs(grace_secs),
            exit: None,
        })
    }
}

/// A process started by [`ProcessBuilder::spawn`]. Stopped on drop.
#[derive(Debug)]
pub struct Supervised {
    name: String,
    pid: Pid,
    group: Pid,
    supervisor: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
    grace: Duration,
    exit: Option<ExitStatus>,
}

impl Supervised {
    /// The name given to [`ProcessBuilder::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PID of the program (not of its supervisor).
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    /// Whether the program is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status once the program has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.supervisor.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Errors with the log tail if the program has exited. Call it while polling for readiness.
    pub fn check_running(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(anyhow!(
                "{} exited during startup ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            )),
        }
    }

    /// Freezes the program with SIGSTOP (it keeps its sockets open but answers nothing). Returns once every
    /// thread of the program is stopped (signal delivery to a busy thread is asynchronous), so a request sent
    /// afterwards can never be answered; fails if that takes more than 5 seconds.
    pub fn freeze(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if all_threads_stopped(self.pid.as_raw()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{} (pid {}) did not stop within 5 s of SIGSTOP", self.name, self.pid());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resumes a frozen program with SIGCONT.
    pub fn thaw(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Kills the program with SIGKILL, as a crash would; the supervisor then exits with it.
    pub fn kill(&mut self) -> Result<()> {
        if self.exit_status().is_none() {
            self.signal(Signal::SIGKILL)?;
        }
        let _ = wait_timeout(&mut self.supervisor, Duration::from_secs(10))?;
        self.exit_status();
        Ok(())
    }

    /// Stops the program: SIGTERM, then SIGKILL after the grace period; waits for it and kills whatever is
    /// left in its process group. Idempotent.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status() {
            self.sweep();
            return Ok(status);
        }
        let _ = kill(self.group, Signal::SIGTERM);
        let status = if let Some(status) = wait_timeout(&mut self.supervisor, self.grace + Duration::from_secs(5))? {
            status
        } else {
            let _ = killpg(self.group, Signal::SIGKILL);
            self.supervisor.wait()?
        };
        self.exit = Some(status);
        self.sweep();
        Ok(status)
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        if self.exit.is_some() {
            bail!("{} is not running", self.name);
        }
        kill(self.pid, signal).with_context(|| format!("failed to send {signal} to {} (pid {})", self.name, self.pid()))
    }

    fn sweep(&mut self) {
        // The group can only still exist if the supervisor died abnormally and left the program behind.
        let _ = killpg(self.group, Signal::SIGCONT);
        let _ = killpg(self.group, Signal::SIGKILL);
        self.lifeline = None;
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Whether every thread of process `pid` is in the stopped state (`T` in `/proc/PID/task/TID/stat`).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = fs::read_to_string(task.path().join("stat")) else { return false };
        // The state follows the command name, which is in parentheses and may itself contain ") ".
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        if state != Some('T') {
            return false;
        }
        any = true;
    }
    any
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last `lines` lines of a file (at most its last 64 KiB), or a note saying why there are none.
pub fn tail_of(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log: {e})"),
    }
}

/// Resident set size of process `pid` now and at its peak (`VmRSS`, `VmHWM` from `/proc`), in KiB; `None` when
/// the process is gone.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// A free TCP port on `ip` (bound and released; the caller should use it right away).
pub fn free_port(ip: std::net::IpAddr) -> Result<u16> {
    let listener = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("failed to bind {ip}:0"))?;
    Ok(listener.local_addr()?.port())
}

/// Polls until `addr` accepts TCP connections; errors with the log tail if `process` exits meanwhile.
pub fn wait_for_port(process: &mut Supervised, addr: std::net::SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        process.check_running()?;
        if Instant::now() >= deadline {
            bail!(
                "{} did not listen on {addr} within {timeout:?}; last lines of {}:\n{}",
                process.name(),
                process.log_path().display(),
                process.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process with this PID exists and is not a zombie (an exited process nobody has reaped yet, as
/// orphans may stay when PID 1 does not reap).
pub fn pid_is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may itself contain ") ".
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// `n` random bytes from the kernel, as lowercase hex.
pub fn random_hex(n: usize) -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut bytes = vec![0_u8; n];
    if File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        // Unreachable on Linux; still unique within the process.
        let seed = FALLBACK.fetch_add(1, Ordering::Relaxed) ^ u64::from(std::process::id()) << 32;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed.to_le_bytes()[i % 8];
        }
    }
    bytes.iter().fold(String::with_capacity(n * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Lowercase letters, digits and `-` only (a DNS-label-like fragment for names of files and objects).
pub fn sanitize(label: &str) -> String {
    let out: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let out = out.trim_matches('-');
    if out.is_empty() { "x".to_owned() } else { out.to_owned() }
}

fn keep_workdirs() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_keeps_dns_friendly_characters() {
        assert_eq!(sanitize("Backup_Test.1"), "backup-test-1");
        assert_eq!(sanitize("--"), "x");
    }

    #[test]
    fn the_owner_pid_is_read_from_workdir_names() {
        assert_eq!(owner_pid("controlplane-12033-1b03e196"), Some(12033));
        assert_eq!(owner_pid("controlplane-12033-1b03e196-etcd"), Some(12033));
        assert_eq!(owner_pid("s3-16923-a21c9bb0-s3-data"), Some(16923));
        assert_eq!(owner_pid("operator-tests-22479-1aee5120"), Some(22479));
        assert_eq!(owner_pid("something-else"), None);
    }

    #[test]
    fn random_hex_has_two_characters_per_byte() {
        let a = random_hex(8);
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_hex(8));
    }

    #[test]
    fn a_stopped_process_is_gone_and_its_log_is_kept() {
        let workdir = Workdir::create("unit").unwrap();
        let mut p = ProcessBuilder::new("sleeper", "/bin/sh")
            .args(["-c", "echo hello; exec sleep 600"])
            .grace(Duration::from_secs(1))
            .spawn(&workdir)
            .unwrap();
        let pid = p.pid();
        assert!(p.is_running());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !p.log_tail(5).contains("hello") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(p.log_tail(5).contains("hello"));
        p.stop().unwrap();
        assert!(!pid_is_alive(pid));
        assert!(!p.is_running());
    }

    #[test]
    fn a_program_that_exits_early_reports_its_log() {
        let workdir = Workdir::create("unit").unwrap();
        let mut p =
            ProcessBuilder::new("failing", "/bin/sh").args(["-c", "echo boom >&2; exit 3"]).spawn(&workdir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = p.check_running().unwrap_err().to_string();
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
    }

    #[test]
    fn a_frozen_process_is_still_stopped() {
        let workdir = Workdir::create("unit").unwrap();
        let mut p = ProcessBuilder::new("frozen", "/bin/sleep")
            .arg("600")
            .grace(Duration::from_secs(1))
            .spawn(&workdir)
            .unwrap();
        assert!(pid_is_alive(p.pid()));
        p.freeze().unwrap();
        p.stop().unwrap();
        assert!(!pid_is_alive(p.pid()));
    }
}
