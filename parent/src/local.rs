//! `Router.local()`: a child of this process's own executable, over a socketpair.

use std::sync::Arc;

use mitogen_core::{Error, Message, Result, Router, Stream, CHILD_MARKER};

use crate::connect::{chain_name, handshake, hello_receiver, Deadline, Options};
use crate::context::Context;
use crate::process::ChildProcess;
use mitogen_core::sys::{self, Signal};

/// Start a child of this process's own executable over a socketpair (Mitogen `local()`).
///
/// # Errors
/// [`StreamError`](mitogen_core::StreamError) if it cannot start or dies before the handshake
/// (with its last output); [`TimeoutError`](mitogen_core::TimeoutError) if no handshake comes
/// within `connect_timeout`; [`GeneralError`](mitogen_core::GeneralError) for a bad option.
pub(crate) fn connect_local(router: &Router, context_id: u32, options: &Options) -> Result<Context> {
    let remote_name = options.checked_remote_name()?;
    let (ours, theirs) = sys::socketpair(false).map_err(|e| Error::stream_io("socketpair", e))?;
    let (err_r, err_w) = sys::pipe(false).map_err(|e| Error::stream_io("pipe", e))?;
    let exe = match (&options.executable, options.command_prefix.is_empty()) {
        (Some(exe), _) => exe.clone().into_os_string(),
        // /proc/self/exe still names this program after a rebuild replaced the file on disk...
        (None, true) => "/proc/self/exe".into(),
        // ...but behind a prefix command it would name that command.
        (None, false) => std::env::current_exe()
            .map_err(|e| Error::stream_io("cannot find this program's executable", e))?
            .into_os_string(),
    };
    let mut argv = options.command_prefix.clone();
    argv.push(exe);
    argv.push(CHILD_MARKER.into());
    let title = format!("mitogen:{remote_name}");
    let arg0 = options.command_prefix.is_empty().then_some(title.as_str());
    let hello = hello_receiver(router, context_id)?;
    let out = theirs.try_clone().map_err(|e| Error::stream_io("dup", e))?;
    let stdio = crate::process::Stdio3 { stdin: theirs, stdout: out, stderr: err_w };
    let proc = Arc::new(ChildProcess::spawn(&argv, arg0, stdio, None, &Default::default())?);
    let name = chain_name(router, options.name.clone().unwrap_or_else(|| format!("local.{}", proc.pid())));
    let mut config = options.config(router, context_id, &name)?;
    config.handshake_handle = hello.handle();
    let stream = Stream::message(router, name, ours).inspect_err(|_| {
        proc.kill(Signal::SIGKILL);
        proc.reap_blocking();
    })?;
    let first = Message::pickled(&config, 0)?.addressed(context_id, router);
    let _ = stream.send(first);
    handshake(router, proc, stream, Some(err_r), hello, &config, Deadline::after(options.connect_timeout))
}
