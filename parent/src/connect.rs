//! The base every method builds on, at the bottom of the crate: the common [`Options`], the
//! receiver a child's handshake arrives on, chained names, and the handshake itself (the
//! parent's stream to the child, its stderr, its reaping), with the one rendering of its
//! failures (end of output, timeout, cancellation).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitogen_core::{
    log_forwarded, ChildConfig, Error, HandlerOptions, Hello, Latch, Message, Receiver, Result, Router, Stream,
    StreamErrorKind, FORWARD_LOG, PROTOCOL_VERSION, SHUTDOWN,
};

use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::process::{reap_when_disconnected, watch_stderr, ChildProcess};
use mitogen_core::sys::{self, Signal};

/// Options of [`Router::local`](crate) and the other context factories (Mitogen's keyword
/// arguments of `local()`). Serializable (all but `via`), so a `via=` context receives them as
/// they are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    /// The context's name in logs; default `local.<pid>`.
    pub name: Option<String>,
    /// Suffix of the child's process title `mitogen:<remote_name>`; default
    /// `<user>@<host>:<pid>`. May not contain `/`.
    pub remote_name: Option<String>,
    /// Debug logging in the child and its descendants (Mitogen `debug`): each writes its own
    /// `$TMPDIR/mitogen.<pid>.<unix time>.log` at debug level.
    pub debug: bool,
    /// Profile the child and its descendants (Mitogen `profiling`): each writes its threads'
    /// profiles on a graceful exit (see [`mitogen_core::profiling`]).
    pub profiling: bool,
    /// How long to wait for the child's handshake (Mitogen `connect_timeout`, default 30 s).
    pub connect_timeout: Duration,
    /// Whether the child's router refuses sibling traffic; default: this router's setting.
    pub unidirectional: Option<bool>,
    /// Run the executable through this command, e.g. `["env", "X=1"]`, `["nice", "-n",
    /// "10"]` or `["valgrind"]` (the counterpart of Mitogen's list-valued `python_path`): on
    /// this machine for `local()`, on the target for every bootstrapped method (ssh, sudo,
    /// containers, ...), where stage 1 runs the executable behind it. `fork()` refuses it.
    pub command_prefix: Vec<OsString>,
    /// Start this executable instead of the current one (Mitogen's string `python_path`): a
    /// file on this machine for `local()`, a path on the target for a bootstrapped method,
    /// which then ships nothing. It must be built from the same code to serve the same
    /// functions. `fork()` refuses it.
    pub executable: Option<PathBuf>,
    /// Create the child through this context instead of directly (Mitogen `via`): any context
    /// this program holds, `Options { via: Some(web.clone()), .. }`.
    #[serde(skip)]
    pub via: Option<Context>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: None,
            remote_name: None,
            debug: false,
            profiling: false,
            connect_timeout: Duration::from_secs(30),
            unidirectional: None,
            command_prefix: Vec::new(),
            executable: None,
            via: None,
        }
    }
}

/// The default process-title suffix: `<user>@<host>:<pid>` of this process.
pub fn default_remote_name() -> String {
    format!("{}@{}:{}", sys::username(), sys::hostname(), std::process::id())
}

impl Options {
    pub(crate) fn checked_remote_name(&self) -> Result<String> {
        let name = self.remote_name.clone().unwrap_or_else(default_remote_name);
        if name.contains('/') {
            return Err(Error::general(format!("remote_name {name:?} may not contain '/'")));
        }
        Ok(name)
    }

    pub(crate) fn config(&self, router: &Router, context_id: u32, name: &str) -> Result<ChildConfig> {
        let mut parent_ids = vec![router.context_id()];
        parent_ids.extend(router.identity().parent_ids.iter().copied());
        // Router::enable_debug (or a parent that was asked for debug) puts the whole tree in debug.
        let debug = self.debug || mitogen_core::debug_tree();
        // The master's level for this child's records, and its table for the child's children.
        let (level, log_levels) = mitogen_core::child_log_level(name);
        Ok(ChildConfig {
            context_id,
            parent_ids,
            name: name.to_owned(),
            remote_name: self.checked_remote_name()?,
            log_level: level as usize,
            log_levels,
            debug,
            profiling: self.profiling || mitogen_core::profiling::profile_tree(),
            unidirectional: self.unidirectional.unwrap_or_else(|| router.unidirectional()),
            max_message_size: router.max_message_size() as u64,
            handshake_handle: 0,
            protocol_version: PROTOCOL_VERSION,
            expected_sha256: None,
        })
    }
}

/// Log `FORWARD_LOG` records from children under `mitogen::ctx::<name>`, once per router.
pub(crate) fn ensure_log_handler(router: &Router) {
    if !router.has_handler(FORWARD_LOG) {
        let options = HandlerOptions { handle: Some(FORWARD_LOG), ..Default::default() };
        let _ = router.add_handler(|msg| log_forwarded(&msg), options);
    }
}

/// A child's name: `<via name>.<name>` when created by a child context (names chain down the
/// tree), else `name`.
pub(crate) fn chain_name(router: &Router, name: String) -> String {
    match mitogen_core::ExternalContext::current() {
        Some(ec) if ec.config().context_id == router.context_id() => format!("{}.{name}", ec.config().name),
        _ => name,
    }
}

/// The receiver a new child's [`Hello`] arrives on: it dies if the child's route is lost.
pub(crate) fn hello_receiver(router: &Router, context_id: u32) -> Result<Receiver> {
    Receiver::with_options(router, None, false, Some(router.context_by_id(context_id)))
}

/// The one deadline of a whole connect, made once from `connect_timeout` (which error texts
/// name, rather than the time that was left).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    /// When the connect gives up.
    pub(crate) at: Instant,
    /// The `connect_timeout` asked for.
    pub(crate) timeout: Duration,
}

impl Deadline {
    pub(crate) fn after(timeout: Duration) -> Deadline {
        Deadline { at: Instant::now() + timeout, timeout }
    }
}

/// The child ended before its handshake: how, and what it printed last.
pub(crate) fn eof_before_handshake(name: &str, proc: &ChildProcess) -> Error {
    let kind = StreamErrorKind::Eof { last_lines: proc.last_output() };
    Error::stream_kind(kind, format!("{name}: EOF before the handshake: {}", proc.describe_exit()))
}

/// No handshake by the deadline: the command, the timeout asked for, and its last few lines.
pub(crate) fn no_handshake(name: &str, proc: &ChildProcess, timeout: Duration) -> Error {
    let out = proc.last_output();
    let last = match &out[out.len().saturating_sub(3)..] {
        [] => "it printed nothing".to_owned(),
        tail => format!("last output: {}", tail.join(" | ")),
    };
    Error::timeout(format!("{name}: no handshake from {} within {timeout:?}; {last}", proc.command()))
}

/// The broker began to shut down during the connect (Mitogen's `CancelledError`).
pub(crate) fn cancelled(name: &str) -> Error {
    Error::stream_kind(
        StreamErrorKind::Cancelled,
        format!("{name}: connection cancelled because the broker began to shut down"),
    )
}

/// Everything after the child process exists: stream, stderr, config, handshake, reaping.
pub(crate) fn handshake(
    router: &Router,
    proc: Arc<ChildProcess>,
    stream: Stream,
    stderr: Option<OwnedFd>,
    hello: Receiver,
    config: &ChildConfig,
    deadline: Deadline,
) -> Result<Context> {
    ensure_log_handler(router);
    let broker = router.broker();
    let name = config.name.clone();
    stream.set_name(name.clone());
    let ctx = mitogen_core::Context::new(router, config.context_id, Some(name.clone()));
    let stderr_done = Arc::new(Latch::new());
    let d = stderr_done.clone();
    // stderr (or the PTY master that carries it) is read and logged for the child's whole
    // life: closing a PTY master would hang up the child.
    let err_stream = match stderr {
        Some(fd) => Some(watch_stderr(broker, &name, fd, proc.clone(), move || {
            let _ = d.put(());
        })),
        None => {
            let _ = d.put(());
            None
        }
    };
    // A graceful shutdown asks a connected child to exit, then waits for its stream to close.
    // A connect still in progress is cancelled at once (Mitogen's CancelledError): the child
    // may be anywhere in its start and cannot be relied on to answer within the grace period.
    let (id, my_id) = (config.context_id, router.context_id());
    let connected = Arc::new(AtomicBool::new(false));
    let c = connected.clone();
    stream.set_on_shutdown(move |s, broker| {
        if !c.load(Ordering::Acquire) {
            return s.on_disconnect(broker);
        }
        let msg = Message { dst_id: id, src_id: my_id, auth_id: my_id, handle: SHUTDOWN, ..Message::default() };
        let _ = s.send(msg);
    });
    let (b, p) = (broker.clone(), proc.clone());
    stream.on_disconnect_listener(move |s| reap_when_disconnected(&b, p, s.is_detached()));
    crate::routes::upgrade_router(router);
    // Up the tree first: the route must reach every ancestor before anything the child sends.
    crate::routes::announce_route(router, config.context_id, &name);
    router.register(&ctx, &stream);
    let outcome = hello.get_deadline(deadline.at).and_then(|m| m.unpickle::<Hello>());
    match outcome {
        Ok(h) if h.protocol_version == PROTOCOL_VERSION && h.exe_sha256 != config.expected_sha256 => {
            proc.kill(Signal::SIGKILL);
            stream.on_disconnect(broker);
            let (expected, actual) =
                (config.expected_sha256.clone().unwrap_or_default(), h.exe_sha256.unwrap_or_default());
            let reason = format!(
                "{name}: the target's copy of this executable is not the one shipped (sha256 {actual}, \
                 expected {expected}); it was removed, and the next connect ships a fresh copy"
            );
            Err(Error::stream_kind(StreamErrorKind::CorruptExecutable { expected, actual }, reason))
        }
        Ok(h) if h.protocol_version == PROTOCOL_VERSION && h.program_id != mitogen_core::program_id() => {
            proc.kill(Signal::SIGKILL);
            stream.on_disconnect(broker);
            let reason = format!(
                "{name}: the child is another program (its remote functions are not this one's: program \
                 id {}, this one's {}); register only this program built for the target",
                h.program_id,
                mitogen_core::program_id()
            );
            Err(Error::stream_kind(StreamErrorKind::WrongProgram, reason))
        }
        Ok(h) if h.protocol_version == PROTOCOL_VERSION => {
            connected.store(true, Ordering::Release);
            if config.profiling {
                // Once it runs, it writes its profile as it exits, after its stream is gone.
                proc.set_term_after(crate::process::PROFILED_TERM_AFTER);
            }
            log::debug!("{name}: connected (pid {}, mitogen {})", h.pid, h.version);
            crate::stats::count_connection();
            Ok(Context::from(ctx))
        }
        Ok(h) => {
            proc.kill(Signal::SIGKILL);
            stream.on_disconnect(broker);
            let kind = StreamErrorKind::ProtocolMismatch { ours: PROTOCOL_VERSION, theirs: h.protocol_version };
            Err(Error::stream_kind(
                kind,
                format!(
                    "{name}: child speaks protocol version {} (mitogen {}), this executable speaks \
                     {PROTOCOL_VERSION} (mitogen {})",
                    h.protocol_version,
                    if h.version.is_empty() { "?" } else { &h.version },
                    mitogen_core::VERSION
                ),
            ))
        }
        Err(e) if e.is_timeout() => {
            proc.kill(Signal::SIGKILL);
            stream.on_disconnect(broker);
            Err(no_handshake(&name, &proc, deadline.timeout))
        }
        // Not the stream's end: a Hello that does not decode, say.
        Err(e) if !e.is_channel() => {
            proc.kill(Signal::SIGKILL);
            stream.on_disconnect(broker);
            Err(e.prefixed(&format!("{name}: bad handshake")))
        }
        Err(_) => {
            // A shutdown force-disconnects the stream first (a dead "lost connection" reply)
            // and only then exits: either way it is the shutdown that ended the connection.
            // (`shutting_down` is set before the broker exits, so it also covers that case.)
            if broker.shutting_down() {
                proc.kill(Signal::SIGKILL);
                stream.on_disconnect(broker);
                proc.reap_blocking();
                return Err(cancelled(&name));
            }
            // The child died: its stderr ends too. Collect the last lines, then reap.
            let _ = stderr_done.get_timeout(Duration::from_secs(2));
            proc.wait_timeout(Duration::from_secs(2));
            drop(err_stream);
            Err(eof_before_handshake(&name, &proc))
        }
    }
}
