//! The generic method: a context started through any command the user gives, bootstrapped
//! from this executable (see [`bootstrap`](crate::bootstrap)).

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitogen_core::sys::Signal;
use mitogen_core::{Error, Message, Result, Router, Stream, StreamError, StreamErrorKind};
use serde::{Deserialize, Serialize};

use crate::bootstrap::{self, CacheMode, Run};
use crate::connect::{self, chain_name, handshake, hello_receiver, Deadline, Options};
use crate::context::Context;
use crate::process::{shell_quote, ChildProcess, Setup};
use crate::prompt::{self, NoPrompts, PromptReader, Prompts};
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
    /// Ship the executable uncompressed even where the target has `gzip`: for a command that
    /// runs on this machine (`env`, `setpriv`, `systemd-run`, a chroot), where a pipe moves the
    /// bytes faster than `gzip -d` restores them (a cold connect takes about half the time).
    /// Off by default: the command may cross a network (`ssh` in a wrapper, `kubectl`). The
    /// methods that run on this machine (sudo, su, doas, setns, the local container engines)
    /// ship uncompressed without being told.
    #[serde(default)]
    pub uncompressed: bool,
}

impl Bootstrapped for CommandSpec {
    fn launch(&self, _: Deadline) -> Result<Launch<'_>> {
        Ok(Launch {
            no_cache: self.no_cache,
            compress: !self.uncompressed,
            ..Launch::new(self.argv.clone(), self.transport)
        })
    }
}

/// A connection method built on the bootstrap (Mitogen's per-method `Connection`, with its
/// `get_boot_command`, `create_child` and `diag_protocol_class`): what its options say about
/// how its command starts. Each method's options type implements it in the method's file.
pub(crate) trait Bootstrapped {
    /// How to start the command; a method that first asks a tool (setns) spends `deadline`.
    fn launch(&self, deadline: Deadline) -> Result<Launch<'_>>;
}

/// Start a context with `method` (any [`Bootstrapped`] method's options), within
/// `options.connect_timeout`: its command runs stage 1, which runs a cached copy of this
/// executable or receives one, and the context then answers the handshake as a local child
/// does. A cached copy that fails to start is replaced once.
///
/// # Errors
/// The method's own (a `Password` or `HostKey` [`StreamError`] its prompts found), and those
/// of every method: kind `ChildStart` if the command cannot be started, `Eof` (with the last
/// lines printed) if it ends before the handshake, `Cancelled` if the broker shuts down
/// meanwhile, `CorruptExecutable` if the cached copy is not the one shipped, `NoExecutable`
/// if no executable of this program fits the target, `WrongProgram` if the child is another
/// program;
/// [`TimeoutError`](mitogen_core::TimeoutError) if nothing answers within `connect_timeout`.
pub(crate) fn connect(
    router: &Router,
    context_id: u32,
    method: &impl Bootstrapped,
    options: &Options,
) -> Result<Context> {
    let deadline = Deadline::after(options.connect_timeout);
    method.launch(deadline)?.connect(router, context_id, options, deadline)
}

/// The method's prompt handling, made fresh for each attempt.
pub(crate) type PromptsFn<'a> = Box<dyn Fn() -> Box<dyn Prompts> + Sync + 'a>;

/// How a method runs the boot command: what every connection method (the generic one, ssh,
/// sudo, ...) hands to the one path they share.
pub(crate) struct Launch<'a> {
    /// The method's words; the boot command follows them.
    pub(crate) argv: Vec<OsString>,
    /// How the boot command follows the method's words.
    pub(crate) boot: Boot,
    pub(crate) transport: Transport,
    pub(crate) no_cache: bool,
    /// Ship the executable gzip-compressed (when the target has gzip). Methods whose command
    /// runs on this machine (sudo, su, doas, setns, local container engines) turn it off: a
    /// pipe moves the bytes faster than gzip on the target restores them (a cold connect in
    /// half the time), and there is no link whose bandwidth compression would save.
    pub(crate) compress: bool,
    /// The context's default name; `None` names it `<program>.<pid>`.
    pub(crate) name: Option<String>,
    /// The method's prompt handling, fresh for each attempt.
    pub(crate) prompts: PromptsFn<'a>,
    /// Environment and namespaces for the command (setns); default: none.
    pub(crate) setup: Setup,
    /// Added to the error if the command ends before the handshake (LXC's tools report a
    /// failed start poorly).
    pub(crate) eof_hint: Option<&'static str>,
}

impl<'a> Launch<'a> {
    /// `argv` followed by the boot command as words, on `transport`, with no prompts.
    pub(crate) fn new(argv: Vec<OsString>, transport: Transport) -> Launch<'a> {
        Launch {
            argv,
            boot: Boot::Words,
            transport,
            no_cache: false,
            compress: true,
            name: None,
            prompts: Box::new(|| Box::new(NoPrompts)),
            setup: Setup::default(),
            eof_hint: None,
        }
    }

    /// Start the context within `deadline`; a cached copy that fails to start is replaced
    /// once.
    fn connect(&self, router: &Router, context_id: u32, options: &Options, deadline: Deadline) -> Result<Context> {
        let mode = if self.no_cache { CacheMode::None } else { CacheMode::Use };
        let result = match self.attempt(router, context_id, mode, options, deadline) {
            // (A given executable is not the cache's: it is not replaced.)
            Err(Attempt { error, cached: true })
                if options.executable.is_none()
                    && matches!(error.stream_kind_of(), Some(StreamErrorKind::Eof { .. })) =>
            {
                log::warn!("the cached executable did not start ({error}); shipping a fresh copy");
                self.attempt(router, context_id, CacheMode::Replace, options, deadline).map_err(|a| a.error)
            }
            other => other.map_err(|a| a.error),
        };
        result.map_err(|e| match (self.eof_hint, e.stream_kind_of()) {
            (Some(hint), Some(StreamErrorKind::Eof { .. })) => e.suffixed(hint),
            _ => e,
        })
    }

    fn attempt(
        &self,
        router: &Router,
        context_id: u32,
        mode: CacheMode,
        options: &Options,
        deadline: Deadline,
    ) -> std::result::Result<Context, Attempt> {
        let fail = |error| Attempt { error, cached: false };
        let mut argv = self.argv.clone();
        let boot = bootstrap::stage1_argv(&options.command_prefix);
        let quoted = || boot.iter().map(|w| shell_quote(&w.to_string_lossy()));
        match self.boot {
            Boot::Words => argv.extend(boot.iter().cloned()),
            Boot::Quoted => argv.extend(quoted().map(OsString::from)),
            Boot::Joined => argv.push(quoted().collect::<Vec<_>>().join(" ").into()),
            Boot::Forked => argv.push(format!("{}; exit $?", quoted().collect::<Vec<_>>().join(" ")).into()),
        }
        let hello = hello_receiver(router, context_id).map_err(fail)?;
        let Started { proc, read, write, stderr } = self.transport.start(&argv, &self.setup).map_err(fail)?;
        let proc = Arc::new(proc);
        let default = || format!("{}.{}", self.argv.first().map_or("sh".into(), program_name), proc.pid());
        let name = chain_name(router, options.name.clone().or_else(|| self.name.clone()).unwrap_or_else(default));
        let broker = router.broker().clone();
        let shipped = {
            let mut prompts = (self.prompts)();
            let mut on_line = |line: &str| {
                log::debug!(target: "mitogen::stderr", "{name}: {line}");
                proc.push_output(line.to_owned());
            };
            let mut stdout_line = on_line;
            let on_data = self.transport == Transport::Pty;
            let stderr_fd = stderr.as_ref().map(|f| f.as_fd());
            let mut side = PromptReader::new(stderr_fd, &mut *prompts, &mut on_line, on_data, deadline.at);
            let shipped = [Some(&read), Some(&write), stderr.as_ref()]
                .into_iter()
                .flatten()
                .try_for_each(crate::io::prepare)
                .and_then(|()| {
                    let cancelled = || broker.shutting_down();
                    let what = match &options.executable {
                        Some(path) => Run::Given(path),
                        None => Run::Shipped { mode, compress: self.compress },
                    };
                    bootstrap::run(
                        read.as_fd(),
                        write.as_fd(),
                        &mut side,
                        what,
                        deadline.at,
                        &cancelled,
                        &mut stdout_line,
                    )
                });
            if let (Err(_), Some(text)) = (&shipped, side.waiting_at()) {
                // What the command waits after, unanswered (a prompt not recognised), is part
                // of what it printed.
                proc.push_output(format!("{text} (waiting)"));
            }
            shipped
        };
        let shipped = match shipped {
            Ok(s) => s,
            Err(e) => return Err(fail(bootstrap_failed(&name, &proc, stderr, e, deadline.timeout))),
        };
        crate::stats::count(shipped.cached, shipped.bytes_sent);
        log::debug!(
            "{name}: bootstrapped ({}, {} executable bytes sent)",
            if shipped.cached { "cached copy" } else { "fresh copy" },
            shipped.bytes_sent
        );
        let cached = shipped.cached;
        let mut config = options.config(router, context_id, &name).map_err(fail)?;
        config.handshake_handle = hello.handle();
        config.expected_sha256 = shipped.sha256;
        let stream = Stream::message_pair(router, name, read, write).map_err(|error| {
            proc.kill(Signal::SIGKILL);
            proc.reap_blocking();
            Attempt { error, cached }
        })?;
        let first = Message::pickled(&config, 0).map_err(fail)?.addressed(context_id, router);
        let _ = stream.send(first);
        handshake(router, proc, stream, stderr, hello, &config, deadline).map_err(|error| Attempt { error, cached })
    }
}

/// How a method's command takes the boot command (`sh -c <stage 1> mitogen-stage1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Boot {
    /// As separate words, run as they are (`env`, `sudo ... --`, `doas ... --`).
    Words,
    /// As separate words, each quoted: the command joins them for a shell (ssh).
    Quoted,
    /// As one word, quoted for the shell that runs it (`su <user> -c <word>`).
    Joined,
    /// As one word followed by `; exit $?`, so the shell forks it instead of replacing itself
    /// (`/bin/sh -c <word>` after `setns`: a PID namespace applies to children only).
    Forked,
}

/// A failed attempt, and whether the target ran a cached copy.
struct Attempt {
    error: Error,
    cached: bool,
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
        // It ended by itself, and the bootstrap read its stderr to the end: reap it.
        proc.wait_timeout(Duration::from_secs(2));
    } else {
        proc.kill(Signal::SIGKILL);
        let mut keep = |l: &str| proc.push_output(l.to_owned());
        prompt::drain(stderr.as_ref().map(|f| f.as_fd()), Instant::now() + Duration::from_millis(200), &mut keep);
    }
    proc.reap_blocking();
    match e {
        _ if eof => connect::eof_before_handshake(name, proc),
        Error::TimeoutError(_) => connect::no_handshake(name, proc, timeout),
        Error::StreamError(s) if s.kind() == &StreamErrorKind::Cancelled => connect::cancelled(name),
        // What the method's prompts found (a wrong password, a host key) says it all.
        e @ Error::StreamError(_)
            if matches!(
                e.stream_kind_of(),
                Some(StreamErrorKind::Password | StreamErrorKind::HostKey | StreamErrorKind::NoExecutable { .. })
            ) =>
        {
            e.prefixed(name)
        }
        Error::StreamError(s) => {
            let text = format!("{name}: {}; {}", s.reason(), proc.describe_exit());
            Error::StreamError(StreamError::with_kind(s.kind().clone(), text))
        }
        other => other.prefixed(name),
    }
}
