//! The child side: [`ExternalContext`], its configuration, the dispatch loop, and stdio and log
//! forwarding (Mitogen `ExternalContext`, `Dispatcher`, `IoLogger`, `LogForwarder`).

use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::broker::{panic_message, Broker, BrokerOptions};
use crate::context::Context;
use crate::error::{CallError, Error, Result};
use crate::globals::{self, Identity};
use crate::lines::LineSplitter;
use crate::message::{with_decode_router, Message, CALL_FUNCTION, FORWARD_LOG, HEADER_LEN, SHUTDOWN};
use crate::receiver::Receiver;
use crate::remote::{lookup, CallRequest};
use crate::router::{has_parent_authority, HandlerOptions, Policy, Router};
use crate::stream::Stream;
use crate::sync::Mutex;
use crate::sys;

/// `argv[1]` of a process started as a child. Checked before `main` (see [`init`](crate::init)).
pub const CHILD_MARKER: &str = "--mitogen-child";

/// Version of the bootstrap and framing protocol, exchanged in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// Everything a child learns from its parent before any user code runs: sent as the first
/// frame on the new stream (Mitogen's bootstrap `config` dictionary).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildConfig {
    /// The child's context id.
    pub context_id: u32,
    /// Its parents' ids, nearest first.
    pub parent_ids: Vec<u32>,
    /// The context's name, for log lines and process titles.
    pub name: String,
    /// The process title suffix: the child shows as `mitogen:<remote_name>`.
    pub remote_name: String,
    /// Most verbose log level forwarded to the master (`log::LevelFilter as usize`).
    pub log_level: usize,
    /// Whether debug logging was asked for (Mitogen `debug`).
    pub debug: bool,
    /// Whether profiling was asked for (Mitogen `profiling`).
    pub profiling: bool,
    /// Whether the child's router refuses sibling traffic (Mitogen `unidirectional`).
    pub unidirectional: bool,
    /// The largest message the child accepts.
    pub max_message_size: u64,
    /// Handle in the parent the child sends its [`Hello`] to.
    pub handshake_handle: u32,
    /// The parent's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
}

/// The child's side of the handshake, sent to the parent once its router is up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The child's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The child's process id.
    pub pid: u32,
    /// The id the child took from its config.
    pub context_id: u32,
}

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
        let identity = Identity { context_id: config.context_id, parent_ids: config.parent_ids.clone() };
        let parent_id = identity.parent_id().ok_or_else(|| Error::general("child config names no parent"))?;
        globals::set_identity(identity.clone());
        let broker =
            Broker::with_options(BrokerOptions { shutdown_timeout: Duration::from_secs(3), ..Default::default() })?;
        let router = Router::with_identity(&broker, identity);
        router.set_max_message_size(config.max_message_size as usize);
        router.set_unidirectional(config.unidirectional);
        let stream = Stream::message_pair(&router, format!("{}: parent {parent_id}", config.name), rfd, wfd)?;
        stream.set_privileged(true);
        let parent = router.context_by_id(parent_id);
        // A child exits when its parent goes away, unless it detached.
        let detached = Arc::new(AtomicBool::new(false));
        let (b, ps, d) = (broker.clone(), stream.clone(), detached.clone());
        router.on_stream_disconnect_hook(move |_, s, _| {
            if *s == ps && !d.load(Ordering::Acquire) {
                b.shutdown();
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
        let forwarder = LogForwarder { router: router.clone(), parent_id, name: config.name.clone() };
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
            }),
        };
        ec.publish();
        install_panic_hook();
        // Whenever the broker exits, nothing can reach this context any more: a call running
        // or still queued could only keep an orphan alive. The broker's very last act ends the
        // process, after every exit callback (reaping this context's own children) has run, as
        // Mitogen's child does with SIGTERM to itself.
        ec.inner.broker.set_exit_action(|| sys::exit_now(0));
        let hello = Hello {
            protocol_version: crate::child::PROTOCOL_VERSION,
            pid: std::process::id(),
            context_id: ec.inner.config.context_id,
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

    /// Run calls from the channel one at a time, in order, on this thread, until the channel
    /// dies (Mitogen `_dispatch_calls`).
    pub fn dispatch_calls(&self) {
        for msg in self.inner.channel.iter() {
            self.dispatch_one(&msg);
        }
    }

    fn dispatch_one(&self, msg: &Message) {
        let outcome = match CallRequest::decode(&msg.data) {
            Ok(req) => self.run_call(&req),
            Err(e) => Err(CallError::new("mitogen::StreamError", format!("bad CALL_FUNCTION request: {e}"))),
        };
        // With more calls already waiting, let the broker write this reply together with the
        // next ones (one writev for a burst); the last reply of a burst is written at once.
        crate::stream::set_write_behind(!self.inner.channel.empty());
        match (outcome, msg.reply_to) {
            (Ok(data), r) if r != 0 => {
                let _ = msg.reply_message(Message::raw(0, data), Some(&self.inner.router));
            }
            (Err(e), r) if r != 0 => {
                let _ = msg.reply_message(Message::call_error(&e, 0), Some(&self.inner.router));
            }
            (Err(e), _) => log::error!("call_no_reply failed: {e}"),
            _ => {}
        }
        crate::stream::set_write_behind(false);
    }

    fn run_call(&self, req: &CallRequest<'_>) -> std::result::Result<Vec<u8>, CallError> {
        if let Some(chain) = &req.chain_id {
            if let Some(err) = self.inner.chain_errors.lock().get(chain) {
                return Err(err.clone());
            }
        }
        let outcome = match lookup(&req.path) {
            None => Err(CallError::new(
                "mitogen::CallError",
                format!(
                    "no remote function named {:?} in this executable (is it marked with mitogen::remote!?)",
                    req.path
                ),
            )),
            // Context and Sender arguments bind to this router, as values in replies do.
            Some(f) => with_decode_router(Some(&self.inner.router), || run_guarded(f, req.args)),
        };
        if let (Err(e), Some(chain)) = (&outcome, &req.chain_id) {
            self.inner.chain_errors.lock().insert(chain.clone(), e.clone());
        }
        outcome
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
        // Fails only for a process group leader (a forked child of one); harmless then.
        let _ = sys::setsid();
        let msg = Message::raw(crate::message::DETACHING, Vec::new());
        self.inner.parent.send_await::<()>(msg, Some(Duration::from_secs(30)))?;
        self.inner.detached.store(true, Ordering::Release);
        log::info!("detaching from {stream:?}; parent is context {parent_id}");
        // Mitogen polls the output queue 20 times, 50 ms apart.
        for _ in 0..20 {
            if stream.pending_bytes() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if stream.pending_bytes() > 0 {
            log::error!("{stream:?} still had {} bytes queued after 1000 ms", stream.pending_bytes());
        }
        // Return only once the stream is gone, so nothing this thread sends afterwards (the
        // reply of the call running detach) can still reach the parent.
        let done = Arc::new(crate::latch::Latch::new());
        let (b, d) = (self.inner.broker.clone(), done.clone());
        self.inner.broker.defer(move || {
            stream.on_disconnect(&b);
            let _ = d.put(());
        })?;
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

/// Forget the sticky error of a pipelined call chain (Mitogen `Dispatcher.forget_chain`); called
/// remotely by `CallChain::reset`.
pub fn forget_chain(chain_id: String) {
    if let Some(ec) = ExternalContext::current() {
        ec.inner.chain_errors.lock().remove(&chain_id);
    }
}
crate::remote!(forget_chain);

thread_local! {
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Install, once per process, the panic hook that records a panic in a context for the
/// [`CallError`] of the call it ended; in a process that runs no context (a master, or a child
/// before its context starts) it defers to the hook that was installed before. Called before a
/// `fork` by the forking thread, never in the forked child (std's hook lock may be held there).
pub(crate) fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_context = ExternalContext::current().is_some_and(|ec| ec.inner.pid == std::process::id());
            if !in_context {
                return previous(info);
            }
            let msg = match info.location() {
                Some(l) => format!("{} at {}:{}", panic_message(info.payload()), l.file(), l.line()),
                None => panic_message(info.payload()),
            };
            // std's backtrace lock may have been held by a thread of the parent at the fork.
            let bt = if crate::atfork::is_forked() {
                "(no backtrace: a forked child does not take std's backtrace lock)".to_owned()
            } else {
                Backtrace::force_capture().to_string()
            };
            log::debug!("panic: {msg}");
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((msg, bt)));
        }));
    });
}

/// Run one registered function; a panic becomes a [`CallError`] with its message and backtrace.
fn run_guarded(f: crate::remote::Invoke, args: &[u8]) -> std::result::Result<Vec<u8>, CallError> {
    match catch_unwind(AssertUnwindSafe(|| f(args))) {
        Ok(r) => r,
        Err(p) => {
            let (message, traceback) =
                LAST_PANIC.with(|l| l.borrow_mut().take()).unwrap_or_else(|| (panic_message(&*p), String::new()));
            Err(CallError { type_name: "panic".into(), message, traceback })
        }
    }
}

/// A `FORWARD_LOG` record: `(context name, original target, level, message)`.
pub type LogRecord = (String, String, u8, String);

/// Sends log records to the parent's `FORWARD_LOG` handle (Mitogen `LogForwarder`), for the
/// child's stdio and, through [`ChildLogger`], its `log` records, so `log::info!` in a remote
/// function shows at the master under the target `mitogen::ctx::<name>`.
#[derive(Clone)]
struct LogForwarder {
    router: Router,
    parent_id: u32,
    name: String,
}

thread_local! {
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

impl LogForwarder {
    fn forward(&self, target: &str, level: log::Level, line: &str) {
        // A record logged while forwarding (say, a write error) would recurse: drop it.
        if FORWARDING.with(|f| f.replace(true)) {
            return;
        }
        let record: LogRecord = (self.name.clone(), target.to_owned(), level as u8, line.to_owned());
        self.send(&record);
        FORWARDING.with(|f| f.set(false));
    }

    fn send(&self, record: &LogRecord) {
        if let Ok(msg) = Message::pickled(record, FORWARD_LOG) {
            self.router.context_by_id(self.parent_id).send(msg);
        }
    }
}

/// The `log` logger of a child: forwards each record through the running
/// [`ExternalContext`]. It looks the context up per record, and only in the process that
/// installed it, so a forked child (which inherits the installed logger but not its parent's
/// router, whose threads do not exist there) forwards through its own context, or drops records
/// until it has one.
struct ChildLogger {
    /// Not zero-sized, so its address tells it apart from any other logger.
    _tag: u8,
}

static CHILD_LOGGER: ChildLogger = ChildLogger { _tag: 0 };

/// Whether the installed `log` logger is the core's [`ChildLogger`], which a forked child may
/// use (it forwards through the child's own context); any other belongs to the parent program.
pub(crate) fn logger_is_ours() -> bool {
    std::ptr::addr_eq(log::logger(), &CHILD_LOGGER)
}

impl log::Log for ChildLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(ec) = ExternalContext::current() else { return };
        if ec.inner.pid == std::process::id() {
            ec.inner.forwarder.forward(record.target(), record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Log a forwarded record under `mitogen::ctx::<name>` (the master's side of a child's log
/// forwarder); an intermediate child passes it on up unchanged.
pub fn log_forwarded(msg: &Message) {
    if msg.is_dead() {
        return;
    }
    let Ok(record) = msg.unpickle::<LogRecord>() else {
        return log::error!("bad FORWARD_LOG record from context {}", msg.src_id);
    };
    // An intermediate passes records on unchanged, so the master names the context they came
    // from, not the one that relayed them.
    if let Some(ec) = ExternalContext::current().filter(|ec| ec.inner.pid == std::process::id()) {
        return ec.inner.forwarder.send(&record);
    }
    let (name, target, level, line) = record;
    let level = match level {
        1 => log::Level::Error,
        2 => log::Level::Warn,
        3 => log::Level::Info,
        4 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    let ctx_target = format!("mitogen::ctx::{name}");
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(&ctx_target)
            .args(format_args!("{target}: {line}"))
            .module_path(None)
            .file(None)
            .line(None)
            .build(),
    );
}

/// Read exactly `buf.len()` bytes from `fd`, waiting when it would block.
fn read_exact(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match sys::read(fd, &mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sys::wait_readable(fd, None)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read the first frame the parent sends: the child's [`ChildConfig`].
///
/// # Errors
/// [`StreamError`](crate::StreamError) if the stream ends or the frame is not a config.
pub fn read_config(fd: std::os::fd::BorrowedFd<'_>) -> Result<ChildConfig> {
    let fail = |e: std::io::Error| Error::stream_io("cannot read child config", e);
    let mut header = [0u8; HEADER_LEN];
    read_exact(fd, &mut header).map_err(fail)?;
    let (mut msg, len) = Message::parse_header(&header)?;
    if len > 1 << 20 {
        return Err(Error::stream(format!("child config frame of {len} bytes is implausible")));
    }
    msg.data = vec![0; len];
    read_exact(fd, &mut msg.data).map_err(fail)?;
    let config: ChildConfig = msg.unpickle()?;
    if config.protocol_version != PROTOCOL_VERSION {
        let kind = crate::StreamErrorKind::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs: config.protocol_version };
        return Err(Error::stream_kind(
            kind,
            format!(
                "parent speaks protocol version {}, this executable speaks {PROTOCOL_VERSION}",
                config.protocol_version
            ),
        ));
    }
    Ok(config)
}

/// Run the rest of a child's life after `start`: redirect stdio, take the process title, serve
/// calls until the parent goes, and exit.
pub fn serve(ec: &ExternalContext) -> ! {
    if let Err(e) = ec.redirect_stdio() {
        log::error!("{e}");
    }
    sys::set_thread_title(&format!("mitogen:{}", ec.config().remote_name));
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

fn exec_child_start() -> Result<ExternalContext> {
    let fail = |e: std::io::Error| Error::stream_io("cannot take protocol fds", e);
    let rfd = sys::dup_cloexec(sys::borrow_std(0)).map_err(fail)?;
    let wfd = sys::dup_cloexec(sys::borrow_std(1)).map_err(fail)?;
    // Until redirect_stdio, anything printed goes to the parent's stderr pipe, never the stream.
    sys::dup2(sys::borrow_std(2), 1).map_err(fail)?;
    let config = read_config(rfd.as_fd())?;
    let level = log::LevelFilter::iter().nth(config.log_level).unwrap_or(log::LevelFilter::Info);
    let ec = ExternalContext::start(config, rfd, wfd)?;
    if log::set_logger(&CHILD_LOGGER).is_ok() {
        log::set_max_level(level);
    }
    Ok(ec)
}
