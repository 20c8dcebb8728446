//! The child side (Mitogen `ExternalContext`): how a process becomes a context and lives as one.
//!
//! | file | what |
//! |---|---|
//! | `ctor.rs` | the loader constructor: a process started as a child becomes one before `main` |
//! | `config.rs` | [`ChildConfig`] and [`Hello`]: the first frame from the parent, and the answer |
//! | `mod.rs` | [`ExternalContext`]: start, stdio, detach, exit |
//! | `dispatch.rs` | the dispatch loop: calls in order on the main thread, panics as `CallError`s |
//! | `logging.rs` | log records forwarded to the master, and the master's side of them |

mod config;
mod ctor;
mod dispatch;
mod logging;

pub use config::{
    bytes_digest, executable_digest, read_config, ChildConfig, Hello, CHILD_MARKER, PROTOCOL_VERSION, VERSION,
};
pub use dispatch::forget_chain;
pub(crate) use dispatch::install_panic_hook;
pub(crate) use logging::logger_is_ours;
pub use logging::{
    child_log_level, debug_tree, enable_master_debug_log, format_record, install_library_logger, log_forwarded,
    open_debug_log, set_debug_tree, set_io_logging, LogRecord, CTX_TARGET, IO_TARGET,
};
use logging::{LogForwarder, CHILD_LOGGER};

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, BrokerOptions};
use crate::context::Context;
use crate::error::{CallError, Error, Result};
use crate::globals::{self, Identity};
use crate::lines::LineSplitter;
use crate::message::Message;
use crate::receiver::Receiver;
use crate::router::{has_parent_authority, HandlerOptions, Policy, Router};
use crate::stream::Stream;
use crate::sync::Mutex;
use crate::sys;
use crate::wire::{CALL_FUNCTION, SHUTDOWN};

struct Inner {
    broker: Broker,
    router: Router,
    parent: Context,
    config: ChildConfig,
    channel: Receiver,
    chain_errors: Mutex<HashMap<String, CallError>>,
    forwarder: LogForwarder,
    /// The process this context runs in (a forked copy must not use it).
    pid: u32,
    detached: Arc<AtomicBool>,
    /// The watchdog's control ([`watch_parent`]): written to when the parent's stream is gone,
    /// closed when the context detaches.
    watchdog: Arc<Mutex<Option<OwnedFd>>>,
}

/// The child's own view of itself: its broker, router, parent, and the channel its calls arrive
/// on (Mitogen `mitogen.core.ExternalContext`). A remote function that needs them (Mitogen's
/// `takes_router`, `takes_econtext`) asks for [`ExternalContext::current`].
#[derive(Clone)]
pub struct ExternalContext {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ExternalContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExternalContext({}, {:?})", self.inner.config.context_id, self.inner.config.name)
    }
}

static CURRENT: AtomicPtr<ExternalContext> = AtomicPtr::new(std::ptr::null_mut());

impl ExternalContext {
    /// The running child's context, or `None` in a master (Mitogen's `econtext` argument).
    pub fn current() -> Option<ExternalContext> {
        let p = CURRENT.load(Ordering::Acquire);
        // SAFETY: a non-null pointer came from Box::leak in `publish` and is never freed.
        unsafe { p.as_ref() }.cloned()
    }

    fn publish(&self) {
        // Leaked on purpose: readers may hold it; a process publishes once (twice after fork).
        CURRENT.store(Box::leak(Box::new(self.clone())), Ordering::Release);
    }

    /// Set up a child from `config`, talking to its parent over `rfd`/`wfd`: record the identity,
    /// start the broker and router, register the parent, install the handlers for calls and
    /// `SHUTDOWN`, and send the [`Hello`] handshake.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) or [`GeneralError`](crate::GeneralError) if the
    /// broker, stream or handlers cannot be set up.
    pub fn start(config: ChildConfig, rfd: OwnedFd, wfd: OwnedFd) -> Result<ExternalContext> {
        sys::tune_malloc_for_bulk();
        logging::apply_levels(&config);
        if config.debug {
            // Its own file (a forked child's too, under its own pid), and its children get one.
            logging::set_debug_tree(true);
            if let Err(e) = logging::open_debug_log() {
                // One write(2): a forked child may not take std's stderr lock.
                let msg = format!("mitogen: cannot open a debug log in {}: {e}\n", sys::temp_dir().display());
                let _ = sys::write(sys::borrow_std(2), msg.as_bytes());
            }
        }
        if config.profiling {
            // Its own profile (a forked child's too), and its children are profiled.
            crate::profiling::set_profile_tree(true);
            if let Err(e) = crate::profiling::start() {
                let _ = sys::write(sys::borrow_std(2), format!("mitogen: cannot start profiling: {e}\n").as_bytes());
            }
        }
        log::debug!("{}: starting in pid {}", config.name, std::process::id());
        let identity = Identity { context_id: config.context_id, parent_ids: config.parent_ids.clone() };
        let parent_id = identity.parent_id().ok_or_else(|| Error::general("child config names no parent"))?;
        globals::set_identity(identity.clone());
        let broker =
            Broker::with_options(BrokerOptions { shutdown_timeout: Duration::from_secs(3), ..Default::default() })?;
        let router = Router::with_identity(&broker, identity);
        router.set_max_message_size(config.max_message_size as usize);
        router.set_unidirectional(config.unidirectional);
        // A copy of the parent's descriptor for the watchdog, taken before the stream owns it.
        let watched = sys::dup_cloexec(rfd.as_fd()).map_err(|e| Error::stream_io("cannot watch the parent", e))?;
        let grace = if config.profiling { ORPHAN_GRACE_PROFILED } else { ORPHAN_GRACE };
        let watchdog = Arc::new(Mutex::new(Some(watch_parent(watched, grace, config.name.clone())?)));
        let stream = Stream::message_pair(&router, format!("{}: parent {parent_id}", config.name), rfd, wfd)?;
        stream.set_privileged(true);
        let parent = router.context_by_id(parent_id);
        // A child exits when its parent goes away, unless it detached.
        let detached = Arc::new(AtomicBool::new(false));
        let (b, ps, d, w) = (broker.clone(), stream.clone(), detached.clone(), watchdog.clone());
        router.on_stream_disconnect_hook(move |_, s, _| {
            if *s == ps && !d.load(Ordering::Acquire) {
                b.shutdown();
                // The watchdog lets go of the parent's descriptor (so the parent sees the end
                // now) and gives the process its grace period to exit.
                if let Some(fd) = w.lock().as_ref() {
                    let _ = sys::write(fd.as_fd(), b"d");
                }
            }
        });
        router.register(&parent, &stream);
        let policy: Policy = Arc::new(has_parent_authority);
        let channel = Receiver::with_handler_options(
            &router,
            HandlerOptions { handle: Some(CALL_FUNCTION), policy: Some(policy.clone()), ..Default::default() },
        )?;
        let b = broker.clone();
        router.add_handler(
            move |msg| {
                log::debug!("SHUTDOWN received from context {}", msg.src_id);
                b.shutdown();
            },
            HandlerOptions { handle: Some(SHUTDOWN), policy: Some(policy), ..Default::default() },
        )?;
        let forwarder = LogForwarder::new(router.clone(), parent_id, config.name.clone());
        let ec = ExternalContext {
            inner: Arc::new(Inner {
                broker,
                router,
                parent,
                config,
                channel,
                chain_errors: Mutex::new(HashMap::new()),
                forwarder,
                pid: std::process::id(),
                detached,
                watchdog,
            }),
        };
        ec.publish();
        logging::forward_early_records(&ec);
        install_panic_hook();
        // Whenever the broker exits, nothing can reach this context any more: a call running
        // or still queued could only keep an orphan alive. The broker's very last act ends the
        // process, after every exit callback (reaping this context's own children) has run, as
        // Mitogen's child does with SIGTERM to itself.
        ec.inner.broker.set_exit_action(|| {
            // A profiled child writes its profile on the way out (Mitogen: on graceful exit).
            if let Err(e) = crate::profiling::finish() {
                let _ = sys::write(sys::borrow_std(2), format!("mitogen: cannot write a profile: {e}\n").as_bytes());
            }
            sys::exit_now(0)
        });
        let hello = Hello {
            protocol_version: crate::child::PROTOCOL_VERSION,
            pid: std::process::id(),
            context_id: ec.inner.config.context_id,
            exe_sha256: check_own_executable(ec.inner.config.expected_sha256.as_deref()),
            version: crate::child::VERSION.to_owned(),
            program_id: crate::remote::program_id().to_owned(),
        };
        ec.inner.parent.send(Message::pickled(&hello, ec.inner.config.handshake_handle)?);
        Ok(ec)
    }

    /// The child's broker.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The child's router.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The parent context.
    pub fn parent(&self) -> &Context {
        &self.inner.parent
    }

    /// The configuration the parent sent.
    pub fn config(&self) -> &ChildConfig {
        &self.inner.config
    }

    /// The channel `CALL_FUNCTION` requests arrive on (Mitogen `channel`).
    pub fn channel(&self) -> &Receiver {
        &self.inner.channel
    }

    /// Send `line` to the master as a log record of this context at `level`, under `target`.
    pub fn forward_log(&self, target: &str, level: log::Level, line: &str) {
        self.inner.forwarder.forward(target, level, line);
    }

    /// Make this process's stdout and stderr pipes whose lines become log records of this
    /// context at the master (Mitogen `IoLogger`), and stdin `/dev/null`. From here on nothing a
    /// function prints can touch the protocol stream.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the pipes cannot be made.
    pub fn redirect_stdio(&self) -> Result<()> {
        let fail = |e: std::io::Error| Error::stream_io("cannot redirect stdio", e);
        let null = sys::open_devnull().map_err(fail)?;
        // A terminal on stderr is the parent's PTY (hybrid transport, or a method's own): keep
        // it open, or the parent reading its master sees the last slave close and hangs up,
        // which would SIGHUP this context (Mitogen keeps a dup of it for the same reason).
        if sys::isatty(sys::borrow_std(2)) {
            std::mem::forget(sys::dup_cloexec(sys::borrow_std(2)).map_err(fail)?);
        }
        sys::dup2(null.as_fd(), 0).map_err(fail)?;
        for (fd, target) in [(1, "stdout"), (2, "stderr")] {
            let (r, w) = sys::pipe_blocking_write().map_err(fail)?;
            let fwd = self.inner.forwarder.clone();
            let mut lines = LineSplitter::default();
            let stream = Stream::bytes(&self.inner.broker, target, r, false, move |_, data: &[u8]| {
                lines.feed(data, |line| fwd.forward(target, log::Level::Info, line));
            })?;
            self.inner.broker.start_receive(&stream);
            sys::dup2(w.as_fd(), fd).map_err(fail)?;
        }
        Ok(())
    }

    /// Detach from the parent, to outlive it (Mitogen `ExternalContext.detach()`): leave the
    /// parent's session (`setsid`), tell the parent with `DETACHING` and wait for its answer
    /// (from then on it neither asks this context to shut down nor kills it), let output queued
    /// for the parent drain for up to a second, then disconnect the parent's stream and clear
    /// [`parent_ids`](crate::globals::parent_ids). The context keeps running with its own
    /// subtree; what it does next, and when it exits, is up to it. A call that is running
    /// `detach` gets no reply to its caller (the caller sees the connection lost), so callers
    /// learn that work started through a [`Sender`](crate::Sender) instead. A second call does
    /// nothing.
    ///
    /// # Errors
    /// [`TimeoutError`](crate::TimeoutError) or [`ChannelError`](crate::ChannelError) if the
    /// parent did not answer `DETACHING` within 30 s or was lost; the context then stays attached.
    /// [`GeneralError`](crate::GeneralError) if the broker exited meanwhile.
    pub fn detach(&self) -> Result<()> {
        let parent_id = self.inner.parent.context_id();
        let Some(stream) = self.inner.router.stream_by_id(parent_id).filter(|_| !self.is_detached()) else {
            return Ok(());
        };
        // Fails only if a forked child of it is left in its group; it stays in the parent's
        // session then, in a group of its own.
        if let Err(e) = sys::setsid() {
            log::debug!("detach: setsid: {e}; staying in the parent's session");
        }
        let msg = Message::raw(crate::wire::DETACHING, Vec::new());
        self.inner.parent.send_await::<()>(msg, Some(Duration::from_secs(30)))?;
        self.inner.detached.store(true, Ordering::Release);
        // Stop watching the parent (the watchdog's copy of its descriptor closes with it).
        drop(self.inner.watchdog.lock().take());
        log::info!("detaching from {stream:?}; parent is context {parent_id}");
        // Output queued for the parent leaves first: the stream disconnects once it drains,
        // or after a second (Mitogen polls its queue 20 times, 50 ms apart).
        let done = Arc::new(crate::latch::Latch::new());
        let d = done.clone();
        stream.on_disconnect_listener(move |_| {
            let _ = d.put(());
        });
        let b = self.inner.broker.clone();
        self.inner.broker.defer(move || {
            stream.disconnect_when_drained(&b);
            let (b2, s) = (b.clone(), stream.clone());
            b.timer(Duration::from_secs(1), move || {
                if !s.is_disconnected() {
                    log::error!("{s:?} still had {} bytes queued after 1000 ms", s.pending_bytes());
                    s.on_disconnect(&b2);
                }
            });
        })?;
        // Return only once the stream is gone, so nothing this thread sends afterwards (the
        // reply of the call running detach) can still reach the parent.
        done.get_timeout(Duration::from_secs(30))?;
        globals::set_identity(Identity { context_id: self.inner.config.context_id, parent_ids: Vec::new() });
        Ok(())
    }

    /// Whether [`detach`](ExternalContext::detach) was called.
    pub fn is_detached(&self) -> bool {
        self.inner.detached.load(Ordering::Acquire)
    }

    /// Shut the broker down, wait for it, and end the process with status 0.
    pub fn exit(&self) -> ! {
        self.inner.broker.shutdown();
        self.inner.broker.join();
        sys::exit_now(0)
    }
}

/// How long a child whose parent has hung up waits for its broker to end the process before
/// the watchdog ends it: well past the broker's shutdown grace (3 s) and the reaping of the
/// child's own children (about 1 s each, in parallel).
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// The same for a profiled child, which also writes its profile on the way out.
const ORPHAN_GRACE_PROFILED: Duration = Duration::from_secs(40);

/// Watch `parent` (a copy of the descriptor the parent's stream reads) from a thread of its own
/// that needs nothing of the broker's and takes no lock: when the parent hangs up (it died, or
/// the path to it did), or the context's own stream to it is gone (a byte on the returned
/// descriptor; the copy is closed then, so the parent sees the end at once), and the process
/// still runs `grace` later, the broker is wedged, and the watchdog ends the process: no
/// context outlives its parent whatever its broker does. Closing the returned descriptor stops
/// the watch (a context that detaches).
fn watch_parent(parent: OwnedFd, grace: Duration, name: String) -> Result<OwnedFd> {
    let (stop_r, stop_w) = sys::pipe(true).map_err(|e| Error::stream_io("cannot watch the parent", e))?;
    let watch = move || {
        // Ok(true): a byte (the stream is gone); Ok(false): closed (detached).
        let control = || {
            let mut byte = [0u8; 1];
            match sys::read(stop_r.as_fd(), &mut byte) {
                Ok(0) => Ok(false),
                Ok(_) => Ok(true),
                Err(e) => Err(e),
            }
        };
        let mut parent = Some(parent);
        while let Some(fd) = &parent {
            let mut fds = [sys::readable(stop_r.as_fd()), sys::hangup(fd.as_fd())];
            match sys::poll(&mut fds, None) {
                Ok(_) if sys::is_ready(&fds[0]) => match control() {
                    Ok(false) => return,
                    Ok(true) => parent = None,
                    Err(_) => {}
                },
                Ok(_) if sys::is_ready(&fds[1]) => parent = None,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        let deadline = std::time::Instant::now() + grace;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if sys::poll(&mut [sys::readable(stop_r.as_fd())], Some(left)).is_ok_and(|n| n > 0)
                && matches!(control(), Ok(false))
            {
                return;
            }
        }
        logging::write_debug_line(&format!(
            "{name}: parent gone and the broker did not exit within {grace:?}; exiting"
        ));
        sys::exit_now(1)
    };
    // Running when this returns, also in a forked child (see `sys::thread`); never joined.
    sys::thread::spawn("mitogen-watchdog", 256 << 10, watch)
        .map_err(|e| Error::general(format!("cannot start the watchdog thread: {e}")))?;
    Ok(stop_w)
}

/// Run the rest of a child's life after `start`: redirect stdio, take the process title, serve
/// calls until the parent goes, and exit.
pub fn serve(ec: &ExternalContext) -> ! {
    if let Err(e) = ec.redirect_stdio() {
        log::error!("{e}");
    }
    // What an operator sees in `ps` on the target, whichever way this process was started
    // (Mitogen's `remote_name`): the whole command line, and the main thread's name.
    let title = format!("mitogen:{}", ec.config().remote_name);
    sys::set_process_title(&title);
    sys::set_thread_title(&title);
    ec.dispatch_calls();
    ec.exit()
}

/// The body of a process started with [`CHILD_MARKER`]: the protocol arrives on fds 0 and 1.
pub(crate) fn run_exec_child() -> ! {
    sys::ignore_sigpipe();
    match exec_child_start() {
        Ok(ec) => serve(&ec),
        Err(e) => {
            // Still the parent's stderr pipe: the parent reports this in its StreamError.
            eprintln!("mitogen child {}: {e}", std::process::id());
            sys::exit_now(1)
        }
    }
}

/// When the parent shipped this executable: its sha256, and if that is not what was shipped (a
/// corrupt or replaced cache entry), delete the file, so the next connect ships a fresh copy.
///
/// Hashing tens of MiB on every start would dominate a warm connect, so a verified copy gets a
/// stamp beside it, `<file>.ok`, holding the file's inode, size, modification time and change
/// time: while those are unchanged (the cache directory is private to the account) the copy is
/// trusted without hashing it again. Anyone who can write the file can set its modification
/// time back (`touch -r`, `utimensat`), but no unprivileged call sets the change time, which
/// every write, `chmod`, `chown`, link and rename moves on: a copy altered in any way is hashed
/// again. A copy that deletes itself (`no_cache`) gets no stamp.
fn check_own_executable(expected: Option<&str>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let expected = expected?;
    let exe = std::fs::read_link("/proc/self/exe").ok().filter(|p| p.exists());
    let stamp = |p: &std::path::Path| {
        let m = std::fs::metadata(p).ok()?;
        Some(format!("{} {} {} {} {} {}\n", m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
    };
    let stamp_path = exe.as_ref().map(|p| {
        let mut s = p.clone().into_os_string();
        s.push(".ok");
        std::path::PathBuf::from(s)
    });
    if let (Some(exe), Some(sp)) = (&exe, &stamp_path) {
        if stamp(exe).is_some() && std::fs::read_to_string(sp).ok() == stamp(exe) {
            return Some(expected.to_owned());
        }
    }
    let actual = match config::executable_digest(std::path::Path::new("/proc/self/exe")) {
        Ok((_, sha)) => sha,
        Err(e) => format!("unreadable: {e}"),
    };
    match (exe, stamp_path) {
        (Some(path), Some(sp)) if actual != expected => {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(sp);
        }
        (Some(path), Some(sp)) => {
            if let Some(st) = stamp(&path) {
                // Written whole under a temporary name, then renamed: never a torn stamp.
                let tmp = sp.with_extension(format!("ok.{}", std::process::id()));
                if std::fs::write(&tmp, st).is_ok() {
                    let _ = std::fs::rename(&tmp, &sp);
                }
            }
        }
        _ => {}
    }
    Some(actual)
}

fn exec_child_start() -> Result<ExternalContext> {
    // `--mitogen-unlink` (the bootstrap's `no_cache`): the file this runs from goes now; the
    // running image does not need it.
    if ctor::cmdline_has("--mitogen-unlink") {
        if let Ok(path) = std::fs::read_link("/proc/self/exe") {
            let _ = std::fs::remove_file(path);
        }
    }
    let fail = |e: std::io::Error| Error::stream_io("cannot take protocol fds", e);
    let rfd = sys::dup_cloexec(sys::borrow_std(0)).map_err(fail)?;
    let wfd = sys::dup_cloexec(sys::borrow_std(1)).map_err(fail)?;
    // Until redirect_stdio, anything printed goes to the parent's stderr pipe, never the stream.
    sys::dup2(sys::borrow_std(2), 1).map_err(fail)?;
    let config = read_config(rfd.as_fd())?;
    // Not in ExternalContext::start: a forked child may not take std's environment lock (it
    // keeps its parent's setting instead).
    if std::env::var("MITOGEN_LOG_LEVEL").is_ok_and(|l| l.eq_ignore_ascii_case("IO")) {
        logging::set_io_logging(true);
    }
    // Installed before the context starts (which applies the config's levels first thing), so
    // what it logs while starting is kept and sent once it can be (none lost).
    if log::set_logger(&CHILD_LOGGER).is_ok() {
        logging::keep_early_records();
    }
    ExternalContext::start(config, rfd, wfd)
}
