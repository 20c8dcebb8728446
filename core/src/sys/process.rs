//! Processes: `fork`, pidfds, reaping, exit statuses, sessions, signals and names.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::signal::{SigHandler, Signal};
use nix::unistd::ForkResult;

use super::io;

/// The outcome of [`fork`].
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork(2)`.
///
/// # Safety
/// In the child only the calling thread exists, and every lock another thread held at the
/// instant of the fork stays held there for ever: the child must touch no such lock (see
/// `mitogen_parent`'s fork module for what the library's path does) and must end with
/// [`exit_now`], never by returning through the parent's stack frames.
pub unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller upholds the child's obligations above.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Forked::Parent(child.as_raw())),
        Ok(ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(io(e)),
    }
}

/// `pidfd_open(2)`: a close-on-exec descriptor that becomes readable when `pid` exits (libc:
/// nix does not wrap pidfds).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nobody else; pidfds are always close-on-exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Send `signal` to the process behind `pidfd` (`pidfd_send_signal(2)`): a reused pid is never
/// hit.
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: the syscall takes an fd, a signal number, a null siginfo and flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal as libc::c_int, std::ptr::null::<u8>(), 0)
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Send `signal` to every process of the process group `pgid` (`killpg(2)`).
///
/// # Errors
/// `ESRCH` when no process is in that group.
pub fn kill_group(pgid: i32, signal: Signal) -> io::Result<()> {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal).map_err(io)
}

/// `waitpid(pid, WNOHANG)`: `Some(raw status)` once the child has exited and is reaped, `None`
/// while it runs; `EINTR` is retried. libc, not nix: callers keep the raw status (it is what
/// `ProcessMonitor` hands its callbacks), which nix's decoded `WaitStatus` does not give back.
pub fn try_wait(pid: i32) -> io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match r {
            0 => return Ok(None),
            r if r == pid => return Ok(Some(status)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Fail with `ECHILD` unless `pid` is a child of this process that can be waited for, without
/// reaping it or consuming its status (`waitid(P_PID, pid, WEXITED | WNOHANG | WNOWAIT)`).
pub fn check_waitable_child(pid: i32) -> io::Result<()> {
    let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
    loop {
        // SAFETY: `info` is valid for writes of one siginfo_t; it is never read back.
        let ret = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                info.as_mut_ptr(),
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Describe a raw wait status as a shell would: "exited with status 3", "killed by signal 9
/// (SIGKILL)".
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        match Signal::try_from(sig) {
            Ok(name) => format!("killed by signal {sig} ({name})"),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        format!("wait status {status:#x}")
    }
}

/// End the process at once with `status`, running no destructors or `atexit` handlers (in a
/// forked child they belong to the parent, whose memory it shares). libc: `_exit(2)`.
pub fn exit_now(status: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions and never returns.
    unsafe { libc::_exit(status) }
}

/// `setsid(2)`: leave the parent's session and process group, into a new session whose
/// group has this process's id. A process group leader cannot do that, and a child started in a
/// group of its own (as every exec'd child is, so that a kill reaches what it starts) is one:
/// it first joins its parent's group, in the same session, then leaves it. Fails if a process
/// of its old group is left (a forked child of it).
pub fn setsid() -> io::Result<()> {
    use nix::unistd::{getpgid, getpgrp, getpid, getppid, setpgid, setsid};
    match setsid() {
        Err(nix::errno::Errno::EPERM) if getpgrp() == getpid() => {
            let parents = getpgid(Some(getppid())).map_err(io)?;
            setpgid(getpid(), parents).map_err(io)?;
            setsid().map(drop).map_err(io)
        }
        other => other.map(drop).map_err(io),
    }
}

/// Ignore `SIGPIPE`, as Rust's runtime does before `main` (a child may start before it).
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN installs no handler code; only the disposition changes.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// Set the calling thread's name as shown by `ps -o comm` (15 bytes at most; `PR_SET_NAME`).
pub fn set_thread_title(title: &str) {
    let short: Vec<u8> = title.bytes().filter(|&b| b != 0).take(15).collect();
    if let Ok(name) = CString::new(short) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// Set what `ps` shows as this process's command line (`/proc/self/cmdline`; Mitogen's
/// `setproctitle`): `title` is written over the memory the kernel placed the arguments in,
/// the rest of which is zeroed, cut to fit that space. No privilege is needed, it is this
/// process's own memory. Afterwards `std::env::args` reads the title too.
pub fn set_process_title(title: &str) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // Fields after the command name (which may hold spaces): field 3 is the first.
    let Some((_, rest)) = stat.rsplit_once(')') else { return };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else { return };
    if end <= start {
        return;
    }
    let bytes: Vec<u8> = title.bytes().filter(|&b| b != 0).take(end - start - 1).collect();
    // SAFETY: [arg_start, arg_end) is this process's argument area, mapped writable on its
    // initial stack for its whole life (the kernel reports it for this very use). Nothing here
    // holds a reference into it: std keeps only raw pointers, which see the new bytes.
    unsafe {
        let area = start as *mut u8;
        std::ptr::write_bytes(area, 0, end - start);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), area, bytes.len());
    }
}

/// In a child between `fork` and `exec` (a `pre_exec` hook): start a new session and make
/// `fd`, a terminal, its controlling terminal, so `/dev/tty` works for sudo, su and ssh. Only
/// `setsid(2)` and `ioctl(TIOCSCTTY)`: async-signal-safe, no allocation.
///
/// # Errors
/// The failing call's errno.
pub fn become_session_leader_with_tty(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: setsid and ioctl(TIOCSCTTY) take no pointers; `fd` is a descriptor of this process.
    unsafe {
        if libc::setsid() < 0 || libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// This process's real user id.
pub fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// This user's login name, for default context names.
pub fn username() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", nix::unistd::getuid()))
}

/// The directory for temporary files: `$TMPDIR`, else `/tmp`, as [`std::env::temp_dir`], but
/// read with `getenv(3)` directly, without std's environment lock, so a forked child (which may
/// have inherited that lock held) can call it. (libc: the point is to bypass std here.)
pub fn temp_dir() -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: the name is NUL-terminated; getenv returns NULL or a NUL-terminated string that
    // is copied at once (nothing in this crate sets the environment).
    let value = unsafe { libc::getenv(c"TMPDIR".as_ptr()) };
    if value.is_null() {
        return "/tmp".into();
    }
    // SAFETY: as above.
    let bytes = unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes();
    match bytes.is_empty() {
        true => "/tmp".into(),
        false => std::ffi::OsStr::from_bytes(bytes).into(),
    }
}

/// This host's name (`localhost` if it cannot be had).
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_a_shell_would_say_them() {
        assert_eq!(describe_status(3 << 8), "exited with status 3");
        assert_eq!(describe_status(9), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    #[allow(clippy::zombie_processes)] // reaped below, by try_wait, which is what is tested
    fn a_pidfd_kills_and_reaps_a_child() {
        let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid).unwrap();
        assert!(crate::sys::is_cloexec(std::os::fd::AsFd::as_fd(&pidfd)).unwrap());
        check_waitable_child(pid).unwrap();
        assert_eq!(try_wait(pid).unwrap(), None);
        pidfd_kill(std::os::fd::AsFd::as_fd(&pidfd), Signal::SIGKILL).unwrap();
        crate::sys::wait_readable(std::os::fd::AsFd::as_fd(&pidfd), None).unwrap();
        let status = try_wait(pid).unwrap().expect("reaped");
        assert_eq!(describe_status(status), "killed by signal 9 (SIGKILL)");
    }
}

/// What a child needs to enter another process's namespaces and root and become an account
/// there, all opened and converted before `fork`, so that [`enter`](Self::enter) makes only
/// async-signal-safe system calls and allocates nothing between `fork` and `exec`.
#[derive(Debug)]
pub struct NamespaceEntry {
    /// `/proc/<pid>/ns/<kind>` of each namespace that differs from ours, in the order entered
    /// (user first, mount last).
    namespaces: Vec<OwnedFd>,
    root: OwnedFd,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    cwd: CString,
}

impl NamespaceEntry {
    /// Open the namespaces of `pid` that differ from this process's and its root directory;
    /// the child will run as `uid`/`gid` with `groups`, in `cwd` (inside that root).
    ///
    /// # Errors
    /// If a namespace or the root cannot be opened (no such process, not permitted).
    pub fn open(pid: i32, uid: u32, gid: u32, groups: &[u32], cwd: &str) -> io::Result<NamespaceEntry> {
        let mut namespaces = Vec::new();
        for kind in ["user", "ipc", "uts", "net", "pid", "cgroup", "mnt"] {
            let theirs = format!("/proc/{pid}/ns/{kind}");
            let (ours, target) = (std::fs::read_link(format!("/proc/self/ns/{kind}")), std::fs::read_link(&theirs));
            match (ours, target) {
                (Ok(a), Ok(b)) if a == b => continue,
                (_, Err(e)) if kind == "cgroup" || kind == "user" => {
                    // Kernels without these namespaces.
                    if e.kind() == io::ErrorKind::NotFound {
                        continue;
                    }
                    return Err(e);
                }
                _ => namespaces.push(std::fs::File::open(&theirs)?.into()),
            }
        }
        let root = std::fs::File::open(format!("/proc/{pid}/root"))?.into();
        let cwd = CString::new(cwd).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(NamespaceEntry { namespaces, root, uid, gid, groups: groups.to_vec(), cwd })
    }

    /// In the forked child, before `exec`: enter each namespace, make the target's root ours,
    /// become the account, and change to its directory (or `/`). The PID namespace applies
    /// to this process's children only: the command must fork once more.
    ///
    /// # Errors
    /// The first system call that fails (`setns` of a mount namespace fails with `EINVAL` in
    /// a process with more than one thread: call this only after `fork`).
    pub fn enter(&self) -> io::Result<()> {
        let check = |r: libc::c_int| if r == -1 { Err(io::Error::last_os_error()) } else { Ok(()) };
        // SAFETY: plain system calls on descriptors and buffers this struct owns; none of them
        // allocates or takes a lock, so they are safe between fork and exec.
        unsafe {
            for ns in &self.namespaces {
                check(libc::setns(ns.as_raw_fd(), 0))?;
            }
            check(libc::fchdir(self.root.as_raw_fd()))?;
            check(libc::chroot(c".".as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
            if libc::chdir(self.cwd.as_ptr()) == -1 {
                check(libc::chdir(c"/".as_ptr()))?;
            }
        }
        Ok(())
    }
}
