//! Child-exit callbacks (Mitogen `mitogen.master.ProcessMonitor`).

use std::fmt;
use std::time::Duration;

use mitogen_core::{sys, Broker, BrokerOptions, Error, Result};

/// Calls back when specific child processes have exited (Mitogen
/// `mitogen.master.ProcessMonitor`).
///
/// Each monitor runs one background thread, `mitogen-process-monitor` (a broker of its own,
/// polling one pidfd per registered process with the same reaper a parent uses for its
/// children, [`mitogen_parent::watch_pidfd`]). [`add`](Self::add)
/// registers a child's pid with a callback; once the child exits, the thread reaps it with
/// `waitpid(pid, &status, WNOHANG)` and calls the callback, on the monitor thread, with the raw
/// wait status (decode it with `std::os::unix::process::ExitStatusExt::from_raw` or the `W*`
/// macros). Callbacks should return quickly: while one runs, no other exit is reported. A
/// callback that panics is logged and does not stop the monitor.
///
/// # pidfds rather than a `SIGCHLD` handler
///
/// Mitogen installs a `SIGCHLD` handler. This implementation instead opens a pidfd
/// (`pidfd_open(2)`, Linux 5.3+) per registered process, and its thread polls those pidfds,
/// which become readable when their process exits. So:
///
/// * no process-wide signal handler is installed: signal dispositions belong to the whole
///   process, so a handler would clash with any other library's or the application's, and a
///   delivered signal interrupts system calls with `EINTR` in arbitrary threads;
/// * only the registered pids are ever waited for: a `SIGCHLD` handler does not say which child
///   exited, so it must either `waitpid(-1)`, stealing the exit status of children that other
///   code (such as [`std::process::Child::wait`]) waits for, or poll every known pid;
/// * a pidfd names one process, not a pid number, so a recycled pid cannot be confused with it
///   while the monitor holds the pidfd.
///
/// The thread neither busy-loops nor sleeps: it blocks in `epoll_wait(2)` until a pidfd is
/// ready (a process that exited but cannot be reaped yet, being ptraced by another, is tried
/// again every 100 ms). Every descriptor is close-on-exec from creation.
///
/// # Dropping
///
/// Dropping the monitor stops its thread and joins it (unless the last reference is dropped by
/// a callback, on the monitor thread itself, which then exits as soon as the callback
/// returns). Processes still registered are left unreaped and their callbacks are dropped
/// uncalled; their pidfds are closed.
///
/// ```no_run
/// # fn demo() -> mitogen_core::Result<()> {
/// use std::os::unix::process::ExitStatusExt;
/// use std::process::ExitStatus;
///
/// let monitor = mitogen_master::ProcessMonitor::new()?;
/// let child = std::process::Command::new("true").spawn().expect("spawn");
/// // The monitor reaps the child: never call `child.wait()` as well.
/// monitor.add(child.id() as i32, |status| {
///     println!("child exited: {}", ExitStatus::from_raw(status));
/// })?;
/// # Ok(()) }
/// ```
pub struct ProcessMonitor {
    broker: Broker,
}

impl ProcessMonitor {
    /// Start a monitor and its thread.
    ///
    /// # Errors
    /// A [`GeneralError`](mitogen_core::GeneralError) when the thread or its poller cannot be
    /// created.
    pub fn new() -> Result<ProcessMonitor> {
        let options = BrokerOptions { name: "mitogen-process-monitor".into(), shutdown_timeout: Duration::ZERO };
        Ok(ProcessMonitor { broker: Broker::with_options(options)? })
    }

    /// Call `callback(status)` on the monitor thread once child process `pid` has exited and the
    /// monitor has reaped it; `status` is the raw wait status, as from `waitpid(2)` (Mitogen
    /// `add(pid, callback)`).
    ///
    /// The monitor owns the reaping: nothing else may wait for `pid` (do not call
    /// [`std::process::Child::wait`] on it), and registering the same pid twice calls only one of
    /// the callbacks (the other reaper finds nothing left to wait for; that is logged). A child
    /// that has already exited but is not yet reaped is reported at once. A callback that
    /// panics is logged; the monitor goes on.
    ///
    /// # Errors
    /// A [`GeneralError`](mitogen_core::GeneralError) saying why, when `pid` is not a process id,
    /// no process `pid` exists, `pid` is not a child of this process (or `SIGCHLD` is ignored, so
    /// children are reaped automatically), or the monitor thread has stopped. A pid recycled by
    /// another child of ours since the caller learnt it cannot be detected.
    pub fn add(&self, pid: i32, callback: impl FnOnce(i32) + Send + 'static) -> Result<()> {
        if pid <= 0 {
            return Err(Error::general(format!("cannot monitor pid {pid}: not a process id")));
        }
        if self.broker.shutting_down() {
            return Err(Error::general(format!("cannot monitor pid {pid}: the process monitor thread has stopped")));
        }
        let pidfd = sys::pidfd_open(pid).map_err(|e| match sys::is_errno(&e, sys::Errno::ESRCH) {
            true => Error::general(format!("cannot monitor pid {pid}: no such process")),
            false => Error::general(format!("cannot monitor pid {pid}: pidfd_open failed: {e}")),
        })?;
        // Checked after pidfd_open, so the pidfd and the check refer to the same process unless
        // it was reaped by someone else in between.
        sys::check_waitable_child(pid).map_err(|e| match sys::is_errno(&e, sys::Errno::ECHILD) {
            true => Error::general(format!(
                "cannot monitor pid {pid}: not a child of this process, already reaped, \
                 or SIGCHLD is ignored"
            )),
            false => Error::general(format!("cannot monitor pid {pid}: waitid failed: {e}")),
        })?;
        mitogen_parent::watch_pidfd(&self.broker, format!("pid {pid}"), pidfd, move || sys::try_wait(pid), callback)
            .map(drop)
            .map_err(|e| Error::general(format!("cannot monitor pid {pid}: {e}")))
    }
}

impl fmt::Debug for ProcessMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessMonitor").field("alive", &!self.broker.shutting_down()).finish_non_exhaustive()
    }
}

impl Drop for ProcessMonitor {
    fn drop(&mut self) {
        // From a callback (on the thread itself) join does nothing: the thread exits once the
        // callback returns.
        self.broker.shutdown();
        self.broker.join();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::sync::mpsc::{self, RecvTimeoutError};

    use std::os::fd::AsFd;
    use std::sync::{Arc, Mutex};

    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    /// Spawn `sh -c script` and return its pid. The `Child` handle is dropped without waiting
    /// (std's `Child` never waits on drop): reaping is left to the monitor under test.
    fn spawn_sh(script: &str) -> i32 {
        let id = Command::new("sh").arg("-c").arg(script).spawn().expect("spawn sh").id();
        i32::try_from(id).unwrap()
    }

    /// A child that runs until its stdin is closed.
    fn spawn_until_stdin_closes() -> Child {
        Command::new("sh").arg("-c").arg("read x; exit 0").stdin(Stdio::piped()).spawn().expect("spawn sh")
    }

    fn pid(child: &Child) -> i32 {
        i32::try_from(child.id()).unwrap()
    }

    #[test]
    fn reports_exit_status_of_child() {
        let monitor = ProcessMonitor::new().unwrap();
        let child = spawn_sh("exit 3");
        let (tx, rx) = mpsc::channel();
        monitor.add(child, move |status| tx.send(status).unwrap()).unwrap();
        let status = ExitStatus::from_raw(rx.recv_timeout(WAIT).unwrap());
        assert_eq!(status.code(), Some(3));
    }

    #[test]
    fn reports_each_child_separately() {
        let monitor = ProcessMonitor::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let children: Vec<i32> = ["exit 1", "exit 2", "kill -9 $$"].into_iter().map(spawn_sh).collect();
        for &pid in &children {
            let tx = tx.clone();
            monitor.add(pid, move |status| tx.send((pid, status)).unwrap()).unwrap();
        }
        let mut got: Vec<(i32, i32)> = (0..3).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
        got.sort_by_key(|&(pid, _)| children.iter().position(|&c| c == pid));
        let statuses: Vec<ExitStatus> = got.iter().map(|&(_, s)| ExitStatus::from_raw(s)).collect();
        assert_eq!(statuses[0].code(), Some(1));
        assert_eq!(statuses[1].code(), Some(2));
        assert_eq!(statuses[2].signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn dropped_monitor_with_pending_pid_ends_its_thread() {
        let monitor = ProcessMonitor::new().unwrap();
        let mut child = spawn_until_stdin_closes();
        let (tx, rx) = mpsc::channel::<i32>();
        monitor.add(pid(&child), move |status| tx.send(status).unwrap()).unwrap();
        // The monitor thread's id, from the thread itself (counting this process's threads
        // would count other tests' under `cargo test`, which runs them side by side).
        let (tid_tx, tid_rx) = mpsc::channel();
        // SAFETY: gettid has no preconditions.
        monitor.broker.defer(move || tid_tx.send(unsafe { libc::gettid() }).unwrap()).unwrap();
        let task = format!("/proc/self/task/{}", tid_rx.recv_timeout(WAIT).unwrap());
        assert!(std::path::Path::new(&task).exists());
        drop(monitor);
        // The thread has been joined (its task goes as it is released, a moment after the join
        // returns) and dropped the pending callback.
        let deadline = std::time::Instant::now() + WAIT;
        while std::path::Path::new(&task).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!std::path::Path::new(&task).exists(), "the monitor thread ended");
        assert_eq!(rx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected));
        // The monitor is gone, so reaping the child is ours again.
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn callback_may_drop_the_monitor() {
        let slot = Arc::new(Mutex::new(Some(ProcessMonitor::new().unwrap())));
        // Reaped by the monitor, never waited for here.
        #[allow(clippy::zombie_processes)]
        let mut first = spawn_until_stdin_closes();
        let mut second = spawn_until_stdin_closes();
        let (dropped_tx, dropped_rx) = mpsc::channel();
        let (pending_tx, pending_rx) = mpsc::channel::<i32>();
        {
            let guard = slot.lock().unwrap();
            let monitor = guard.as_ref().unwrap();
            let slot = Arc::clone(&slot);
            monitor
                .add(pid(&first), move |_| {
                    drop(slot.lock().unwrap().take());
                    dropped_tx.send(()).unwrap();
                })
                .unwrap();
            monitor.add(pid(&second), move |status| pending_tx.send(status).unwrap()).unwrap();
        }
        drop(first.stdin.take());
        dropped_rx.recv_timeout(WAIT).unwrap();
        // The thread exits after that callback, dropping the second, pending registration.
        assert_eq!(pending_rx.recv_timeout(WAIT), Err(RecvTimeoutError::Disconnected));
        drop(second.stdin.take());
        assert!(second.wait().unwrap().success());
    }

    #[test]
    fn panicking_callback_does_not_stop_the_monitor() {
        let monitor = ProcessMonitor::new().unwrap();
        let first_pid = spawn_sh("exit 0");
        let (ran_tx, ran_rx) = mpsc::channel();
        monitor
            .add(first_pid, move |_| {
                ran_tx.send(()).unwrap();
                panic!("callback panic (expected by the test)");
            })
            .unwrap();
        ran_rx.recv_timeout(WAIT).unwrap();
        // The first child was reaped before its callback ran.
        assert!(sys::check_waitable_child(first_pid).is_err());
        let second = spawn_sh("exit 4");
        let (tx, rx) = mpsc::channel();
        monitor.add(second, move |status| tx.send(status).unwrap()).unwrap();
        assert_eq!(ExitStatus::from_raw(rx.recv_timeout(WAIT).unwrap()).code(), Some(4));
        assert!(!monitor.broker.shutting_down());
    }

    #[test]
    fn add_rejects_what_is_not_a_child() {
        let monitor = ProcessMonitor::new().unwrap();
        let ours = i32::try_from(std::process::id()).unwrap();
        let err = monitor.add(ours, |_| ()).unwrap_err();
        assert!(err.to_string().contains("not a child"), "{err}");
        // Above any pid_max (at most 2^22).
        let err = monitor.add(i32::MAX, |_| ()).unwrap_err();
        assert!(err.to_string().contains("no such process"), "{err}");
        for bad in [0, -1] {
            let err = monitor.add(bad, |_| ()).unwrap_err();
            assert!(err.to_string().contains("not a process id"), "{err}");
        }
    }

    #[test]
    fn descriptors_are_cloexec() {
        let mut child = spawn_until_stdin_closes();
        let pidfd = sys::pidfd_open(pid(&child)).unwrap();
        assert!(sys::is_cloexec(pidfd.as_fd()).unwrap());
        drop(pidfd);
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}
