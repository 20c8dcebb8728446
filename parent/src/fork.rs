//! `Router.fork()`: a child that is a copy of this process.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use mitogen_core::{Error, ExternalContext, Result, Router};

use crate::context::Context;
use crate::local::Options;
use crate::process::ChildProcess;
use crate::sys::{self, Forked};

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
/// above 2 except its own stream is closed (so no copy of another stream keeps a peer from seeing
/// end of file), the calling thread's latch socket is replaced, and a fresh broker and router are
/// built; the parent's broker, router and other threads do not exist there. It then runs
/// `on_start` and serves calls like any child. `local()` is better for long-lived children.
///
/// # Errors
/// As [`connect_local`](crate::connect_local).
pub fn connect_fork(router: &Router, context_id: u32, fork: &ForkOptions) -> Result<Context> {
    let (ours, theirs) = sys::socketpair().map_err(|e| Error::stream(format!("socketpair: {e}")))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| Error::stream(format!("pipe: {e}")))?;
    let placeholder = format!("fork.{context_id}");
    let mut config = fork.options.config(router, context_id, &placeholder)?;
    let hello = crate::local::hello_receiver(router, context_id)?;
    config.handshake_handle = hello.handle();
    match sys::fork().map_err(|e| Error::stream(format!("fork: {e}")))? {
        Forked::Child => {
            // The parent's receiver is the parent's business: forget it without touching the
            // router (whose locks another thread may have held at the fork).
            std::mem::forget(hello);
            drop(ours);
            drop(err_r);
            // stderr goes to the parent's pipe until the child redirects it.
            let _ = sys::dup2(err_w.as_fd(), 2);
            drop(err_w);
            let keep = theirs.as_raw_fd();
            sys::close_fds_except(keep);
            mitogen_core::forget_thread_socket_after_fork();
            if let Some(f) = &fork.on_fork {
                f();
            }
            config.name = crate::local::chain_name(
                router,
                fork.options.name.clone().unwrap_or_else(|| format!("fork.{}", std::process::id())),
            );
            let rfd = match theirs.try_clone() {
                Ok(fd) => fd,
                Err(_) => sys::exit_now(1),
            };
            match ExternalContext::start(config, rfd, theirs) {
                Ok(ec) => {
                    if let Some(f) = &fork.on_start {
                        f(&ec);
                    }
                    mitogen_core::serve(&ec)
                }
                Err(e) => {
                    eprintln!("mitogen fork child {}: {e}", std::process::id());
                    sys::exit_now(1)
                }
            }
        }
        Forked::Parent(pid) => {
            drop(theirs);
            drop(err_w);
            let proc = Arc::new(ChildProcess::adopt(pid, vec![format!("fork of {}", std::process::id())])?);
            config.name =
                crate::local::chain_name(router, fork.options.name.clone().unwrap_or_else(|| format!("fork.{pid}")));
            let stream = mitogen_core::Stream::message(router, config.name.clone(), ours)?;
            crate::local::handshake(router, proc, stream, err_r, hello, &config, fork.options.connect_timeout)
        }
    }
}
