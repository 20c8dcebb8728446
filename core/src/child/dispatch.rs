//! The dispatch loop: calls run one at a time, in order, on the child's main thread; panics
//! become [`CallError`]s (Mitogen `Dispatcher`).

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::ExternalContext;
use crate::broker::panic_message;
use crate::error::CallError;
use crate::message::{with_decode_router, Message};
use crate::remote::{lookup, CallRequest};

impl ExternalContext {
    /// Run calls from the channel one at a time, in order, on this thread, until the channel
    /// dies (Mitogen `_dispatch_calls`).
    pub fn dispatch_calls(&self) {
        for msg in self.inner.channel.iter() {
            // A call still queued once the broker began to shut down (the parent went, or asked
            // this context to exit) never runs: with no parent it could only keep an orphan
            // alive. Mitogen closes the channel then, discarding what it holds.
            if self.inner.broker.shutting_down() {
                break;
            }
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
            let bt = if crate::globals::is_forked() {
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
