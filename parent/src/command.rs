//! The generic method: a context started through any command the user gives, bootstrapped
//! from this executable (see [`bootstrap`](crate::bootstrap)).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitogen_core::sys::{self, Signal};
use mitogen_core::{Error, Message, Result, Router, Stream, StreamError, StreamErrorKind};
use serde::{Deserialize, Serialize};

use crate::bootstrap::{self, CacheMode};
use crate::context::Context;
use crate::local::{chain_name, handshake, hello_receiver, Options};
use crate::process::ChildProcess;
use crate::transport::{Started, Transport};

/// How a context is started through a command: the words before the boot command, and whether
/// the shipped executable may stay in the target account's cache. Serializable, so a `via=`
/// context can run the same method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// The command the boot command (`sh -c <stage 1>`) is appended to: `["env", "-i"]`,
    /// `["setpriv", "--reuid=nobody", "--"]`, `["systemd-run", "--pipe", "--"]`, ...; empty runs
    /// `sh` directly.
    pub argv: Vec<OsString>,
    /// Leave nothing on the target's disk: the shipped copy is deleted once the child runs, and
    /// every connect ships it again.
    pub no_cache: bool,
    /// How the command's stdio reaches this process (default: a socket pair).
    #[serde(default)]
    pub transport: Transport,
}

/// Start a context through `spec`'s command: the command runs stage 1, which runs a cached copy
/// of this executable or receives one, and the context then answers the handshake as a local
/// child does. A cached copy that fails to start is replaced once.
///
/// # Errors
/// [`StreamError`](mitogen_core::StreamError) of kind `ChildStart` if the command cannot be
/// started, `Eof` (with the last lines printed) if it ends before the handshake, `Cancelled` if
/// the broker shuts down meanwhile, `CorruptExecutable` if the cached copy is not the one
/// shipped; [`TimeoutError`](mitogen_core::TimeoutError) if nothing answers within
/// `connect_timeout`.
pub fn connect_command(router: &Router, context_id: u32, spec: &CommandSpec, options: &Options) -> Result<Context> {
    let deadline = Instant::now() + options.connect_timeout;
    let mode = if spec.no_cache { CacheMode::None } else { CacheMode::Use };
    match attempt(router, context_id, spec, mode, options, deadline) {
        Err(Attempt { error, cached: true }) if matches!(error.stream_kind_of(), Some(StreamErrorKind::Eof { .. })) => {
            log::warn!("the cached executable did not start ({error}); shipping a fresh copy");
            attempt(router, context_id, spec, CacheMode::Replace, options, deadline).map_err(|a| a.error)
        }
        other => other.map_err(|a| a.error),
    }
}

/// A failed attempt, and whether the target ran a cached copy.
struct Attempt {
    error: Error,
    cached: bool,
}

fn attempt(
    router: &Router,
    context_id: u32,
    spec: &CommandSpec,
    mode: CacheMode,
    options: &Options,
    deadline: Instant,
) -> std::result::Result<Context, Attempt> {
    let fail = |error| Attempt { error, cached: false };
    let mut argv = spec.argv.clone();
    argv.extend(bootstrap::stage1_argv());
    let hello = hello_receiver(router, context_id).map_err(fail)?;
    let Started { proc, read, write, stderr } = spec.transport.start(&argv).map_err(fail)?;
    let proc = Arc::new(proc);
    let program = spec.argv.first().map_or("sh".into(), program_name);
    let name = chain_name(router, options.name.clone().unwrap_or_else(|| format!("{program}.{}", proc.pid())));
    let broker = router.broker().clone();
    let shipped = bootstrap::prepare(&read).and_then(|()| bootstrap::prepare(&write)).and_then(|()| {
        bootstrap::run(read.as_fd(), write.as_fd(), mode, deadline, &|| broker.shutting_down(), &mut |line| {
            log::debug!(target: "mitogen::stderr", "{name}: {line}");
            proc.push_output(line.to_owned());
        })
    });
    let shipped = match shipped {
        Ok(s) => s,
        Err(e) => return Err(fail(bootstrap_failed(&name, &proc, stderr, e, options.connect_timeout))),
    };
    log::debug!(
        "{name}: bootstrapped ({}, {} executable bytes sent)",
        if shipped.cached { "cached copy" } else { "fresh copy" },
        shipped.bytes_sent
    );
    let cached = shipped.cached;
    let mut config = options.config(router, context_id, &name).map_err(fail)?;
    config.handshake_handle = hello.handle();
    config.expected_sha256 = Some(shipped.sha256);
    let stream = Stream::message_pair(router, name, read, write).map_err(|error| {
        proc.kill(Signal::SIGKILL);
        proc.reap_blocking();
        Attempt { error, cached }
    })?;
    let mut first = Message::pickled(&config, 0).map_err(fail)?;
    (first.dst_id, first.src_id, first.auth_id) = (context_id, router.context_id(), router.context_id());
    let _ = stream.send(first);
    let left = deadline.saturating_duration_since(Instant::now());
    handshake(router, proc, stream, stderr, hello, &config, left).map_err(|error| Attempt { error, cached })
}

/// The command's name for the context's default name: `env.1234`, `setpriv.1234`.
fn program_name(program: &OsString) -> String {
    let p = std::path::Path::new(program);
    p.file_name().unwrap_or(p.as_os_str()).to_string_lossy().into_owned()
}

/// Stage 1 failed: kill and reap the process, and describe why with everything it printed.
fn bootstrap_failed(name: &str, proc: &ChildProcess, stderr: Option<OwnedFd>, e: Error, timeout: Duration) -> Error {
    let eof = matches!(e.stream_kind_of(), Some(StreamErrorKind::Eof { .. }));
    if eof {
        // It ended by itself: its stderr ends too; keep what it said, then reap it.
        drain_stderr(proc, stderr.as_ref(), Instant::now() + Duration::from_secs(2));
        proc.wait_timeout(Duration::from_secs(2));
    } else {
        proc.kill(Signal::SIGKILL);
        drain_stderr(proc, stderr.as_ref(), Instant::now() + Duration::from_millis(200));
    }
    proc.reap_blocking();
    match e {
        _ if eof => Error::stream_kind(
            StreamErrorKind::Eof { last_lines: proc.last_output() },
            format!("{name}: EOF before the handshake: {}", proc.describe_exit()),
        ),
        Error::TimeoutError(_) => {
            Error::timeout(format!("{name}: no handshake from {} within {timeout:?}", proc.command()))
        }
        Error::StreamError(s) if s.kind() == &StreamErrorKind::Cancelled => Error::stream_kind(
            StreamErrorKind::Cancelled,
            format!("{name}: connection cancelled because the broker began to shut down"),
        ),
        Error::StreamError(s) => {
            let text = format!("{name}: {}; {}", s.reason(), proc.describe_exit());
            Error::StreamError(StreamError::with_kind(s.kind().clone(), text))
        }
        other => other.prefixed(name),
    }
}

/// Read what the process wrote to stderr, until end of file or `deadline`, into its tail.
fn drain_stderr(proc: &ChildProcess, stderr: Option<&OwnedFd>, deadline: Instant) {
    let Some(stderr) = stderr else { return };
    let mut split = mitogen_core::LineSplitter::default();
    let mut buf = [0u8; 4096];
    while let Ok(true) = sys::wait_readable(stderr.as_fd(), Some(deadline)) {
        match sys::read(stderr.as_fd(), &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => split.feed(&buf[..n], |l| proc.push_output(l.to_owned())),
        }
    }
    split.feed(b"", |l| proc.push_output(l.to_owned()));
}
