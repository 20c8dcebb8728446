//! The parent's [`Context`] and [`CallChain`]: calling functions in a child.

use std::borrow::Borrow;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mitogen_core::{
    encode_call, forget_chain, HandlerOptions, Latch, Message, Mutex, Receiver, RemoteFn, Result, Returns,
    CALL_FUNCTION, SHUTDOWN,
};
use serde::Serialize;

/// Calls into one context, optionally pipelined (Mitogen `mitogen.parent.CallChain`).
///
/// Without pipelining each call is independent. With it, calls carry a chain id: they are sent
/// without waiting for earlier ones, run in order, and once one fails every later call in the
/// chain fails with the same [`CallError`](mitogen_core::CallError) without running, until
/// [`reset`](CallChain::reset). This lets `call_no_reply` calls be followed by one `call` that
/// reports whether the whole batch succeeded.
#[derive(Debug)]
pub struct CallChain {
    context: mitogen_core::Context,
    pipelined: bool,
    chain_id: Mutex<Option<String>>,
}

static CHAIN_SERIAL: AtomicU64 = AtomicU64::new(0);

impl CallChain {
    /// A chain of calls into `context`.
    pub fn new(context: mitogen_core::Context, pipelined: bool) -> CallChain {
        CallChain { context, pipelined, chain_id: Mutex::new(None) }
    }

    /// The context called.
    pub fn context(&self) -> &mitogen_core::Context {
        &self.context
    }

    fn chain_id(&self) -> Option<String> {
        if !self.pipelined {
            return None;
        }
        let mut id = self.chain_id.lock();
        Some(
            id.get_or_insert_with(|| {
                let n = CHAIN_SERIAL.fetch_add(1, Ordering::Relaxed);
                format!(
                    "{}-{}-{:?}-{n:x}",
                    mitogen_core::sys::hostname(),
                    std::process::id(),
                    std::thread::current().id()
                )
            })
            .clone(),
        )
    }

    fn request<F: RemoteFn<A>, A: Serialize>(&self, f: F, args: &A) -> Result<Message> {
        Ok(Message::raw(CALL_FUNCTION, encode_call(f, args, self.chain_id().as_deref())?))
    }

    /// Start `f(args...)` and return the [`Receiver`] its result will arrive on (Mitogen
    /// `call_async`). `args` is the argument tuple, by value or by reference (`&(blob,)`
    /// sends a large argument without cloning it). If the context is lost first, the receiver gets a dead message.
    ///
    /// # Errors
    /// [`StreamError`](mitogen_core::StreamError) if the arguments cannot be encoded.
    pub fn call_async<F: RemoteFn<A>, A: Serialize>(&self, f: F, args: impl Borrow<A>) -> Result<Receiver> {
        self.context.send_async(self.request(f, args.borrow())?, false)
    }

    /// Call `f(args...)` in the context and wait for its result (Mitogen `call`).
    ///
    /// # Errors
    /// [`CallError`](mitogen_core::CallError) if the function returned an error or panicked (or
    /// is unknown there); [`ChannelError`](mitogen_core::ChannelError) if the context was lost.
    pub fn call<F: RemoteFn<A>, A: Serialize>(&self, f: F, args: impl Borrow<A>) -> Result<<F::Output as Returns>::Ok> {
        self.call_async(f, args)?.get()?.unpickle()
    }

    /// Start `f(args...)` without asking for its result (Mitogen `call_no_reply`); a failure is
    /// logged in the context, and with pipelining it fails the rest of the chain.
    ///
    /// # Errors
    /// [`StreamError`](mitogen_core::StreamError) if the arguments cannot be encoded.
    pub fn call_no_reply<F: RemoteFn<A>, A: Serialize>(&self, f: F, args: impl Borrow<A>) -> Result<()> {
        self.context.send(self.request(f, args.borrow())?);
        Ok(())
    }

    /// Forget a pipelined chain's failure: tell the context to drop it, and start a new chain id
    /// (Mitogen `reset`).
    pub fn reset(&self) {
        let old = self.chain_id.lock().take();
        if let Some(id) = old {
            if let Ok(data) = encode_call(forget_chain, &(id,), None) {
                self.context.send(Message::raw(CALL_FUNCTION, data));
            }
        }
    }
}

/// A context this program can call functions in (Mitogen `mitogen.parent.Context`). Derefs to
/// the core [`Context`](mitogen_core::Context) for `send`, `send_async` and `send_await`.
#[derive(Clone, Debug)]
pub struct Context {
    core: mitogen_core::Context,
    chain: Arc<CallChain>,
}

impl From<mitogen_core::Context> for Context {
    fn from(core: mitogen_core::Context) -> Context {
        Context { chain: Arc::new(CallChain::new(core.clone(), false)), core }
    }
}

impl Deref for Context {
    type Target = mitogen_core::Context;

    fn deref(&self) -> &mitogen_core::Context {
        &self.core
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Context) -> bool {
        self.core == other.core
    }
}

impl Context {
    /// The core context.
    pub fn core(&self) -> &mitogen_core::Context {
        &self.core
    }

    /// The chain `call`, `call_async` and `call_no_reply` use: not pipelined (Mitogen
    /// `default_call_chain`).
    pub fn default_call_chain(&self) -> &CallChain {
        &self.chain
    }

    /// See [`CallChain::call`].
    ///
    /// # Errors
    /// As [`CallChain::call`].
    pub fn call<F: RemoteFn<A>, A: Serialize>(&self, f: F, args: impl Borrow<A>) -> Result<<F::Output as Returns>::Ok> {
        self.chain.call(f, args)
    }

    /// See [`CallChain::call_async`].
    ///
    /// # Errors
    /// As [`CallChain::call_async`].
    pub fn call_async<F: RemoteFn<A>, A: Serialize>(&self, f: F, args: impl Borrow<A>) -> Result<Receiver> {
        self.chain.call_async(f, args)
    }

    /// See [`CallChain::call_no_reply`].
    ///
    /// # Errors
    /// As [`CallChain::call_no_reply`].
    pub fn call_no_reply<F: RemoteFn<A>, A: Serialize>(&self, f: F, args: impl Borrow<A>) -> Result<()> {
        self.chain.call_no_reply(f, args)
    }

    /// Ask the context to shut down gracefully with a `SHUTDOWN` message (Mitogen `shutdown`).
    /// Returns a latch that receives `()` once the context is gone (its route is lost); with
    /// `wait`, first waits for that. A context that ignores the request is terminated by its
    /// parent's reaper (SIGTERM, then SIGKILL) once its parent shuts down.
    ///
    /// # Errors
    /// [`GeneralError`](mitogen_core::GeneralError) if no handler can be registered, or the
    /// latch was closed while waiting.
    pub fn shutdown(&self, wait: bool) -> Result<Arc<Latch<()>>> {
        let latch = Arc::new(Latch::new());
        let router = self.core.router();
        if router.stream_by_id(self.core.context_id()).is_none() {
            latch.put(())?;
        } else {
            let l = latch.clone();
            let options = HandlerOptions { persist: false, respondent: Some(self.core.clone()), ..Default::default() };
            router.add_handler(
                move |msg| {
                    if msg.is_dead() {
                        let _ = l.put(());
                    }
                },
                options,
            )?;
            self.core.send(Message::raw(SHUTDOWN, Vec::new()));
        }
        if wait {
            latch.get()?;
            latch.put(())?;
        }
        Ok(latch)
    }
}
