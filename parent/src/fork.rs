//! `Router.fork()`: a child that is a copy of this process.
//!
//! # What a forked child may touch before its broker runs
//!
//! After `fork(2)` only the forking thread exists in the child. A lock that another thread held
//! at that instant is held for ever there, and state another thread was half way through
//! changing stays half changed. So, on the child's path from `fork` to its new broker and
//! router, every piece of process-wide state is one of:
//!
//! * **lock-free**: the process identity (`mitogen_core::globals`), the current
//!   `ExternalContext`, handle, stream and waiter counters, this crate's block of context ids
//!   (atomics, see [`allocate_child_id`](crate::allocate_child_id)), the built remote-function
//!   table;
//! * **re-created in the child**: the calling thread's latch socket (forgotten, a fresh one is
//!   made on the next wait), the broker, its poller and thread, the router and every handler
//!   table, the stream to the parent; descriptors inherited from the parent are replaced by
//!   `/dev/null` (not closed: a number the parent's logger or any other code still writes to
//!   must not come back as the child's protocol socket);
//! * **started without std**: the broker's and the watchdog's threads. std's thread start and
//!   end take a process-wide lock of std's (its table of guard pages), which another thread of
//!   the parent holds whenever it starts or ends a thread, as any thread pool does; held at the
//!   fork, it is held for ever in the child. So a forked process starts them with
//!   `pthread_create(3)` and a trampoline of the core's
//!   ([`sys::thread`](mitogen_core::sys::thread), which also says what is given up: std's
//!   stack-overflow message in those threads). Each runs before the child says hello: a child
//!   whose broker did not run within [`START_TIMEOUT`](mitogen_core::sys::thread::START_TIMEOUT)
//!   writes why and exits, and the parent's `fork()` fails (a `StreamError` with that line, or
//!   the `TimeoutError` of a shorter `connect_timeout`; the child is killed then);
//! * **prepared by the forking thread and held across the `fork`**
//!   ([`prepare_fork`](mitogen_core::prepare_fork)): the panic hook (installed once before the
//!   first fork, never set in a child), the remote-function table (built before, so no thread
//!   is half way through), std's stdout and stderr locks (released by the child); and, for a
//!   child that will be profiled, what needs the dynamic loader's write lock, which `fork`
//!   does not reset: where the unwinder's code is, and the symboliser's list of loaded objects
//!   ([`profiling::prepare_fork`](mitogen_core::profiling::prepare_fork));
//! * **per process id**: the profiler's sample table and timer (a forked child starts its own;
//!   the parent's timer is not inherited), the debug log's descriptor;
//! * **never touched**: std's backtrace lock (a forked child's panics carry no backtrace), the
//!   environment lock (the broker thread is spawned with an explicit stack size, so std does
//!   not read `RUST_MIN_STACK`), and the program's logger when it is not the library's own
//!   child logger: its locks and files belong to the parent, so the child sets the log level
//!   to `Off` (records logged in a forked child of a master are dropped; a forked child of a
//!   child forwards them through its own context). Nothing is printed with `eprintln!` before
//!   the child's stdio is its own; a start failure is written to fd 2 with one `write(2)`.
//!
//! What the child's own threads do once running was audited for the same hazard: allocation
//! (the C library's `fork` makes its allocator usable in the child, glibc's and musl's alike),
//! thread-local destructors (glibc registers them under the dynamic loader's lock, which its
//! `fork` resets; std's fallback on musl uses a `pthread_key_t` made before the fork),
//! `std::thread::current()` in those threads (it allocates a handle, no lock), the logger (as
//! above) and stdio (as above).
//!
//! The parent's memory is otherwise the child's: what `on_fork` and the called functions do
//! with locks of the program's own is the program's business, as in Mitogen. That includes a
//! thread the program starts in the child with `std::thread`: it takes std's thread-start lock
//! and can wait for ever if another thread of the parent held it at the fork. Start threads
//! before forking, or use `local()` for a child that starts threads.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use mitogen_core::{Error, ExternalContext, Result, Router};

use crate::connect::Options;
use crate::context::Context;
use crate::process::ChildProcess;
use mitogen_core::sys::{self, Forked};

/// Called in the forked child right after `fork`, before it sets up (Mitogen `on_fork`).
pub type OnFork = Arc<dyn Fn() + Send + Sync>;
/// Called in the forked child once it is set up, before it serves calls (Mitogen `on_start`).
pub type OnStart = Arc<dyn Fn(&ExternalContext) + Send + Sync>;

/// Options of [`connect_fork`]: the common [`Options`] and the two hooks.
#[derive(Clone, Default)]
pub struct ForkOptions {
    /// Name, timeouts, debug and profiling as for `local()`; the executable settings are unused.
    pub options: Options,
    /// See [`OnFork`].
    pub on_fork: Option<OnFork>,
    /// See [`OnStart`].
    pub on_start: Option<OnStart>,
}

impl std::fmt::Debug for ForkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkOptions")
            .field("options", &self.options)
            .field("on_fork", &self.on_fork.is_some())
            .field("on_start", &self.on_start.is_some())
            .finish()
    }
}

/// Fork the calling process into a new child context (Mitogen `fork()`).
///
/// The child keeps a copy of this process's memory but none of its machinery: every descriptor
/// above 2 except its own stream is replaced by `/dev/null` (so no copy of another stream keeps
/// a peer from seeing end of file), the calling thread's latch socket is replaced, and a fresh
/// broker and router are built; the parent's broker, router and other threads do not exist
/// there. It then runs `on_start` and serves calls like any child. See the module docs for what
/// the child may touch; `local()` is better for long-lived children.
///
/// # Errors
/// As a local child's (`Router::local`); a [`GeneralError`](mitogen_core::GeneralError)
/// for `command_prefix` or `executable`, which a fork (no program is started) cannot honour.
pub fn connect_fork(router: &Router, context_id: u32, fork: &ForkOptions) -> Result<Context> {
    if !fork.options.command_prefix.is_empty() || fork.options.executable.is_some() {
        return Err(Error::general(
            "fork: command_prefix and executable have no meaning for a fork, which starts no program \
             (use local() to run the executable under a command or another executable)",
        ));
    }
    let (ours, theirs) = sys::socketpair(false).map_err(|e| Error::stream_io("socketpair", e))?;
    let (err_r, err_w) = sys::pipe(false).map_err(|e| Error::stream_io("pipe", e))?;
    // A program's own logger is silenced in a fork (it is not fork-safe): with none, the
    // library's logger is installed first, so a fork asked for debug logs writes them.
    if fork.options.debug || mitogen_core::debug_tree() {
        mitogen_core::install_library_logger();
    }
    let placeholder = format!("fork.{context_id}");
    let mut config = fork.options.config(router, context_id, &placeholder)?;
    let hello = crate::connect::hello_receiver(router, context_id)?;
    config.handshake_handle = hello.handle();
    if config.profiling {
        mitogen_core::profiling::prepare_fork();
    }
    let guard = mitogen_core::prepare_fork();
    // SAFETY: the child runs `child_main`, which takes none of the locks other threads may
    // hold (the module docs list what it touches) and ends with `exit_now`.
    let forked = unsafe { sys::fork() };
    let pid = match forked {
        Ok(Forked::Child) => child_main(guard, router, fork, config, hello, theirs, (ours, err_r, err_w)),
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => return Err(Error::stream_io("fork", e)),
    };
    drop(guard);
    drop(theirs);
    drop(err_w);
    let proc = Arc::new(ChildProcess::adopt(pid, vec![format!("fork of {}", std::process::id())])?);
    config.name =
        crate::connect::chain_name(router, fork.options.name.clone().unwrap_or_else(|| format!("fork.{pid}")));
    let stream = mitogen_core::Stream::message(router, config.name.clone(), ours)?;
    let deadline = crate::connect::Deadline::after(fork.options.connect_timeout);
    crate::connect::handshake(router, proc, stream, Some(err_r), hello, &config, deadline)
}

/// The forked child's side: only what the module docs allow, then the child's own context.
fn child_main(
    guard: mitogen_core::ForkGuard,
    router: &Router,
    fork: &ForkOptions,
    mut config: mitogen_core::ChildConfig,
    hello: mitogen_core::Receiver,
    theirs: OwnedFd,
    (ours, err_r, err_w): (OwnedFd, OwnedFd, OwnedFd),
) -> ! {
    guard.in_child();
    // The parent's receiver is the parent's business: forget it without touching the router
    // (whose locks another thread may have held at the fork).
    std::mem::forget(hello);
    drop(ours);
    drop(err_r);
    // stderr goes to the parent's pipe until the child redirects it.
    let _ = sys::dup2(err_w.as_fd(), 2);
    drop(err_w);
    sys::null_fds_except(theirs.as_raw_fd());
    if let Some(f) = &fork.on_fork {
        f();
    }
    let default_name = || format!("fork.{}", std::process::id());
    config.name = crate::connect::chain_name(router, fork.options.name.clone().unwrap_or_else(default_name));
    let Ok(rfd) = theirs.try_clone() else { sys::exit_now(1) };
    match ExternalContext::start(config, rfd, theirs) {
        Ok(ec) => {
            if let Some(f) = &fork.on_start {
                f(&ec);
            }
            mitogen_core::serve(&ec)
        }
        Err(e) => {
            sys::write_stderr(&format!("mitogen fork child {}: {e}\n", std::process::id()));
            sys::exit_now(1)
        }
    }
}
