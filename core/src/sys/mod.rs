//! The OS layer of the workspace: every system call the crates make, behind safe functions
//! (but `fork`, whose hazards fall on its caller).
//!
//! Above this module the crates see only `OwnedFd` / `BorrowedFd`, `io::Result`, and the few
//! types re-exported here ([`Signal`], [`Errno`]); `errno` values and signal numbers stay
//! inside. It is built on [`nix`] wherever nix has the call, and on [`libc`] only for what nix
//! lacks or where the raw form is the point (each such place says why): `pidfd_open(2)` and
//! `pidfd_send_signal(2)`, `close_range(2)`, `mallopt(3)`, `_exit(2)`, `read(2)` into
//! uninitialised memory, `waitpid(2)` / `waitid(2)` whose raw status callers keep,
//! `setitimer(2)`, and `getenv(3)` without std's lock.
//!
//! Every descriptor created here is close-on-exec (and non-blocking where asked) in the very
//! call that creates it, because another thread may fork and exec a child at any moment
//! (`SOCK_CLOEXEC`, `O_CLOEXEC`, `F_DUPFD_CLOEXEC`; a PTY from `posix_openpt(3)` and `open(2)`
//! of its slave, not `openpty(3)`, which cannot). Timeouts have nanosecond resolution or round up: a short wait
//! never becomes a zero-timeout spin.
//!
//! | file | what |
//! |---|---|
//! | `fd.rs` | pipes, socket pairs, `dup`, flags, reads and writes, descriptors in a forked child |
//! | `poll.rs` | waiting for descriptors: one with a deadline, or many |
//! | `process.rs` | `fork`, pidfds, reaping, exit statuses, sessions, signals, names |
//! | `mem.rs` | allocation hints for bulk buffers |
//! | `sampler.rs` | the CPU-time sampling profiler: `SIGPROF`, stack walks, the sample table |
//! | `thread.rs` | the library's own threads, which a forked child can start (`pthread_create(3)` there) |
//!
//! This module is public so that the workspace's crates share one layer; it is not part of the
//! library's API and may change with any release.

mod fd;
mod mem;
mod poll;
mod process;
pub mod sampler;
pub mod thread;

pub use fd::{
    borrow_std, close_fds_except, dup2, dup_cloexec, is_cloexec, is_nonblocking, isatty, null_fds_except, open_devnull,
    openpty, pipe, pipe_blocking_write, read, read_into_spare, set_cloexec, set_nonblocking, socketpair, write,
    write_stderr, writev, PIPE_BUF,
};
pub use mem::{alloc_bytes, tune_malloc_for_bulk};
pub use nix::errno::Errno;
pub use nix::sys::signal::Signal;
pub use poll::{hangup, is_ready, poll, readable, wait_readable, writable, PollFd};
pub use process::{
    become_session_leader_with_tty, check_waitable_child, describe_status, exit_now, fork, hostname, ignore_sigpipe,
    kill_group, pidfd_kill, pidfd_open, set_process_title, set_thread_title, setsid, temp_dir, try_wait, uid, username,
    Forked, NamespaceEntry,
};

/// Whether `e` means the other end of a descriptor went away: `EIO` (a TTY whose other end
/// closed), `ECONNRESET` (a socket), `EPIPE` (a pipe).
pub fn is_disconnection(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::EIO | Errno::ECONNRESET | Errno::EPIPE))
}

/// Whether `e` is `errno`.
pub fn is_errno(e: &std::io::Error, errno: Errno) -> bool {
    e.raw_os_error() == Some(errno as i32)
}

/// An `io::Error` from a nix error, keeping its errno.
fn io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}
