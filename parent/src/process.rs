//! Child processes: starting them, keeping their last output, and reaping them.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitogen_core::{Broker, Error, LineSplitter, Mutex, Result, Stream, StreamError, StreamErrorKind};

use mitogen_core::sys::{self, Signal};

/// How many lines of a child's stderr are kept for error messages (Mitogen keeps 100).
const TAIL_LINES: usize = 100;
/// ...each cut to this many bytes, so a command flooding its output is remembered in bounded
/// memory.
const TAIL_LINE: usize = 512;
/// After its stream disconnects, a child gets this long to exit before SIGTERM...
const TERM_AFTER: Duration = Duration::from_secs(1);
/// ...or this long when it is profiled: it writes its profile after its stream is gone.
pub(crate) const PROFILED_TERM_AFTER: Duration = Duration::from_secs(30);
/// ...and this long after that before SIGKILL.
const KILL_AFTER: Duration = Duration::from_secs(2);

/// The three standard descriptors a child is started with.
pub(crate) struct Stdio3 {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// How a command is started beyond its argv and stdio: a replaced environment, and the
/// namespaces and account to enter between `fork` and `exec` (the setns method).
#[derive(Clone, Debug, Default)]
pub(crate) struct Setup {
    pub(crate) env: Option<Vec<(OsString, OsString)>>,
    pub(crate) enter: Option<Arc<sys::NamespaceEntry>>,
}

/// A child process this context started: its pid, a pidfd, the command, its exit status once
/// reaped, and the last lines it wrote to stderr before taking over its own stdio.
#[derive(Debug)]
pub struct ChildProcess {
    pid: i32,
    /// Closed as soon as the child is reaped, so a reaped child holds no descriptor.
    pidfd: Mutex<Option<OwnedFd>>,
    argv: Vec<String>,
    status: Mutex<Option<i32>>,
    tail: Mutex<VecDeque<String>>,
    /// It leads its own process group, which a kill reaches as a whole.
    group_leader: bool,
    /// How long it may take to exit after its stream is gone, in milliseconds.
    term_after_ms: std::sync::atomic::AtomicU64,
}

impl ChildProcess {
    /// Start `argv` with `stdio` as its standard descriptors; argv\[0\] of the new process is
    /// `arg0`. With `ctty`, the child starts a session whose controlling terminal is that
    /// standard descriptor (a PTY slave).
    ///
    /// # Errors
    /// [`StreamError`](mitogen_core::StreamError) naming the command if it cannot be started.
    pub(crate) fn spawn(
        argv: &[OsString],
        arg0: Option<&str>,
        stdio: Stdio3,
        ctty: Option<i32>,
        setup: &Setup,
    ) -> Result<ChildProcess> {
        let shown: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let fail = |e: std::io::Error| {
            let argv = shell_join(&shown);
            let kind = StreamErrorKind::ChildStart { errno: e.raw_os_error().unwrap_or(0), argv: argv.clone() };
            // Mitogen: "Child start failed: <errno text>. Command was: <argv>".
            Error::StreamError(
                StreamError::with_kind(kind, format!("child start failed: {e}; command was: {argv}")).caused_by(e),
            )
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        if let Some(a) = arg0 {
            std::os::unix::process::CommandExt::arg0(&mut cmd, a);
        }
        cmd.stdin(Stdio::from(stdio.stdin)).stdout(Stdio::from(stdio.stdout)).stderr(Stdio::from(stdio.stderr));
        if let Some(env) = &setup.env {
            cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        }
        if let Some(entry) = setup.enter.clone() {
            // SAFETY: `enter` makes only async-signal-safe system calls on what was prepared
            // before the fork, allocating nothing.
            unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || entry.enter()) };
        }
        // Its own process group (a new session, with a terminal), so that a kill reaches what
        // it started too: `sh -c` waiting on a command, a tool's helpers.
        if ctty.is_none() {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        if let Some(fd) = ctty {
            // SAFETY: the hook runs between fork and exec and makes only async-signal-safe
            // system calls (setsid, ioctl), allocating nothing.
            unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, ctty_hook(fd)) };
        }
        let child = cmd.spawn().map_err(fail)?;
        let pid = child.id() as i32;
        // std's Child neither waits nor kills on drop; this type reaps the pid itself.
        drop(child);
        let mut proc = ChildProcess::adopt(pid, shown)?;
        proc.group_leader = true;
        Ok(proc)
    }

    /// Track an already-started child `pid` (a forked one).
    pub(crate) fn adopt(pid: i32, argv: Vec<String>) -> Result<ChildProcess> {
        let pidfd = sys::pidfd_open(pid).map_err(|e| Error::stream_io(format!("pidfd_open({pid})"), e))?;
        Ok(ChildProcess {
            pid,
            pidfd: Mutex::new(Some(pidfd)),
            argv,
            status: Mutex::new(None),
            tail: Mutex::new(VecDeque::new()),
            group_leader: false,
            term_after_ms: std::sync::atomic::AtomicU64::new(TERM_AFTER.as_millis() as u64),
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The command line, shell-quoted.
    pub fn command(&self) -> String {
        shell_join(&self.argv)
    }

    /// The raw wait status, once reaped.
    pub fn status(&self) -> Option<i32> {
        *self.status.lock()
    }

    /// The last lines the child wrote to its stderr before redirecting it.
    pub fn last_output(&self) -> Vec<String> {
        self.tail.lock().iter().cloned().collect()
    }

    pub(crate) fn push_output(&self, mut line: String) {
        if line.len() > TAIL_LINE {
            let mut end = TAIL_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push_str(" [...]");
        }
        let mut t = self.tail.lock();
        if t.len() == TAIL_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }

    /// Reap the child if it has exited; returns whether it is reaped.
    pub fn try_reap(&self) -> bool {
        let mut status = self.status.lock();
        if status.is_some() {
            return true;
        }
        let waited = sys::try_wait(self.pid);
        *status = match &waited {
            Ok(None) => return false,
            Ok(Some(s)) => Some(*s),
            Err(_) => Some(-1),
        };
        drop(status);
        self.pidfd.lock().take();
        // Logged with no lock held: a logger may call back into this library.
        match waited {
            Ok(Some(s)) => log::debug!("child {} {}", self.pid, sys::describe_status(s)),
            Err(e) => log::error!("waitpid({}): {e}", self.pid),
            Ok(None) => {}
        }
        true
    }

    /// Send `signal` unless already reaped; to its whole process group when it leads one (an
    /// unreaped leader keeps its pid, and so the group id, from being reused).
    pub fn kill(&self, signal: Signal) {
        if !self.try_reap() {
            let pidfd = self.pidfd.lock();
            let Some(fd) = pidfd.as_ref() else { return };
            let killed = sys::pidfd_kill(fd.as_fd(), signal);
            if self.group_leader {
                let _ = sys::kill_group(self.pid, signal);
            }
            drop(pidfd);
            if let Err(e) = killed {
                log::debug!("kill({}, {signal}): {e}", self.pid);
            }
        }
    }

    /// Wait at most `timeout` for the child to exit, reaping it.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        if self.try_reap() {
            return true;
        }
        let fd = self.pidfd.lock().as_ref().and_then(|f| f.try_clone().ok());
        if let Some(fd) = fd {
            let _ = sys::wait_readable(fd.as_fd(), Instant::now().checked_add(timeout));
        }
        self.try_reap()
    }

    /// Give the child `grace` to exit after its stream is gone before it is sent SIGTERM
    /// (default 1 s).
    pub(crate) fn set_term_after(&self, grace: Duration) {
        self.term_after_ms.store(grace.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn term_after(&self) -> Duration {
        Duration::from_millis(self.term_after_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Reap synchronously, escalating to SIGTERM then SIGKILL: no zombie is left.
    pub fn reap_blocking(&self) {
        if self.wait_timeout(self.term_after()) {
            return;
        }
        log::debug!("child {} did not exit; sending SIGTERM", self.pid);
        self.kill(Signal::SIGTERM);
        if self.wait_timeout(KILL_AFTER) {
            return;
        }
        log::warn!("child {} ignored SIGTERM; sending SIGKILL", self.pid);
        self.kill(Signal::SIGKILL);
        while !self.wait_timeout(Duration::from_secs(1)) {}
    }

    /// A description of how the child ended, with its last output, for error messages.
    pub fn describe_exit(&self) -> String {
        let how = match self.status() {
            Some(s) => sys::describe_status(s),
            None => "still running".into(),
        };
        let out = self.last_output();
        if out.is_empty() {
            format!("{} (pid {}) {how}; it printed nothing", self.command(), self.pid)
        } else {
            format!("{} (pid {}) {how}; last output:\n{}", self.command(), self.pid, out.join("\n"))
        }
    }
}

/// Reap `proc` once its stream is gone, without blocking the broker: wait for the pidfd, send
/// SIGTERM after [`TERM_AFTER`] (or what [`ChildProcess::set_term_after`] set) and SIGKILL after [`KILL_AFTER`] more. If the broker exits first,
/// reap synchronously on its way out, so `Broker::join` leaves no zombie.
///
/// A `detached` child (it sent `DETACHING`) is never signalled: it is reaped if it exits while
/// the broker runs, and otherwise left to outlive us.
pub(crate) fn reap_when_disconnected(broker: &Broker, proc: Arc<ChildProcess>, detached: bool) {
    if proc.try_reap() {
        return;
    }
    if detached {
        watch_exit(broker, proc);
        return;
    }
    // A reaped child has closed its pidfd, so holding it here until the broker exits costs no
    // descriptor.
    let p = proc.clone();
    broker.on_exit(move || p.reap_blocking());
    let watcher = watch_exit(broker, proc.clone());
    let Some(watcher) = watcher else { return };
    let (p, w) = (proc.clone(), watcher.clone());
    broker.timer(proc.term_after(), move || {
        if !p.try_reap() {
            log::debug!("child {} still running after its stream closed; sending SIGTERM", p.pid);
            p.kill(Signal::SIGTERM);
            let (p, w) = (p.clone(), w.clone());
            w.broker().clone().timer(KILL_AFTER, move || {
                if !p.try_reap() {
                    log::warn!("child {} ignored SIGTERM; sending SIGKILL", p.pid);
                    p.kill(Signal::SIGKILL);
                }
                let _ = w;
            });
        }
    });
}

/// Reap `proc` as soon as its pidfd says it exited, while the broker runs.
fn watch_exit(broker: &Broker, proc: Arc<ChildProcess>) -> Option<Stream> {
    let pidfd = match proc.pidfd.lock().as_ref().map(|f| f.try_clone()) {
        Some(Ok(fd)) => fd,
        Some(Err(e)) => {
            log::error!("cannot watch child {}: {e}", proc.pid);
            return None;
        }
        None => return None,
    };
    let p = proc.clone();
    let reap = move || Ok(p.try_reap().then(|| p.status().unwrap_or(-1)));
    match watch_pidfd(broker, format!("pidfd {}", proc.pid), pidfd, reap, |_| ()) {
        Ok(w) => Some(w),
        Err(e) => {
            log::error!("cannot watch child {}: {e}", proc.pid);
            None
        }
    }
}

/// How often a process whose pidfd reported its exit, but which cannot be reaped yet, is tried
/// again. Only happens when it is ptraced by another process, whose own wait must come first;
/// no event says when that happened.
const UNREAPABLE_RETRY: Duration = Duration::from_millis(100);

/// Call `on_exit(status)` on `broker`'s thread once the process behind `pidfd` has exited and
/// `reap` reaped it (`reap` answers `Some(raw wait status)` once it has): the one pidfd reaper
/// of the workspace, used for children and by `ProcessMonitor`. `reap` is tried each time the
/// pidfd is readable, and every 100 ms while the process cannot be reaped yet; an error from it
/// is logged and ends the watch without calling `on_exit`. The returned stream is the watch:
/// disconnecting it (or the broker's exit) drops `on_exit` uncalled.
///
/// # Errors
/// [`StreamError`](mitogen_core::StreamError) if the pidfd cannot be watched.
pub fn watch_pidfd(
    broker: &Broker,
    name: String,
    pidfd: OwnedFd,
    mut reap: impl FnMut() -> std::io::Result<Option<i32>> + Send + 'static,
    on_exit: impl FnOnce(i32) + Send + 'static,
) -> Result<Stream> {
    let mut on_exit = Some(on_exit);
    let watcher = Stream::readiness(broker, name, pidfd, false, move |s| match reap() {
        Ok(Some(status)) => {
            // Disconnected first: `on_exit` may drop whatever owns the broker.
            s.on_disconnect(s.broker());
            if let Some(f) = on_exit.take() {
                f(status);
            }
        }
        Ok(None) => {
            // Readiness is edge-triggered: re-arm later rather than spin.
            let (b, again) = (s.broker().clone(), s.clone());
            b.stop_receive(s);
            b.clone().timer(UNREAPABLE_RETRY, move || b.start_receive(&again));
        }
        Err(e) => {
            log::warn!("{}: cannot reap (was it reaped by other code?): {e}", s.name());
            s.on_disconnect(s.broker());
        }
    })?;
    broker.start_receive(&watcher);
    Ok(watcher)
}

/// Start a stream reading `stderr` of a child: each line is logged at debug level and kept in
/// `proc`'s tail for error messages; `on_eof` fires at end of file.
pub(crate) fn watch_stderr(
    broker: &Broker,
    name: &str,
    stderr: OwnedFd,
    proc: Arc<ChildProcess>,
    on_eof: impl FnOnce() + Send + 'static,
) -> Result<Stream> {
    let mut lines = LineSplitter::default();
    let mut on_eof = Some(on_eof);
    let target = name.to_owned();
    let stream = Stream::bytes(broker, format!("{name} stderr"), stderr, false, move |_, data: &[u8]| {
        lines.feed(data, |line| {
            log::debug!(target: "mitogen::stderr", "{target}: {line}");
            proc.push_output(line.to_owned());
        });
        if data.is_empty() {
            if let Some(f) = on_eof.take() {
                f();
            }
        }
    })?;
    broker.start_receive(&stream);
    Ok(stream)
}

/// Quote `argv` for a shell, for error messages (cargo-util's `ProcessError` habit).
pub fn shell_join(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// One word quoted for a POSIX shell (Python's `shlex.quote`): as it is when it holds only
/// characters no shell treats specially, else in single quotes.
pub(crate) fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The descriptor number a `pre_exec` hook makes the controlling terminal: stdin (0) or
/// stderr (2) after std has moved the prepared descriptors into place.
pub(crate) fn ctty_hook(fd: i32) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    move || sys::become_session_leader_with_tty(fd)
}
