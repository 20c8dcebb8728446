//! [`Receiver`], [`Sender`] and [`Channel`]: the endpoints of message flows.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sync::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::context::{bound_router, Context};
use crate::error::{Error, Result};
use crate::latch::Latch;
use crate::message::Message;
use crate::router::{HandlerOptions, Router};

/// A function called as `notify(receiver)` on the broker thread when a message is delivered.
pub type Notify = Arc<dyn Fn(&Receiver) + Send + Sync>;

struct Inner {
    router: Router,
    handle: u32,
    respondent: Option<Context>,
    latch: Latch<Message>,
    notify: Mutex<Option<Notify>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            // Usually gone already: a one-shot handler is removed when its message arrives.
            self.router.forget_handler(self.handle);
        }
    }
}

/// Receives the messages sent to one handle in this context (Mitogen `mitogen.core.Receiver`).
///
/// Cheap to clone; clones are the same receiver. Messages are queued on a [`Latch`] by a handler
/// running on the broker thread; [`get`](Receiver::get) and friends wait for them. A dead message
/// (the sender closed, the respondent's route was lost, the broker exited) raises
/// [`ChannelError`](crate::ChannelError). Dropping the last clone unregisters the handle.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receiver({}:{})", self.inner.router.context_id(), self.inner.handle)
    }
}

impl PartialEq for Receiver {
    fn eq(&self, other: &Receiver) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Receiver {
    /// A persistent receiver on a newly allocated handle.
    ///
    /// # Errors
    /// Never in practice; see [`with_options`](Receiver::with_options).
    pub fn new(router: &Router) -> Result<Receiver> {
        Receiver::with_options(router, None, true, None)
    }

    /// A receiver with Mitogen's parameters: an explicit `handle` (else one is allocated);
    /// `persist = false` to take one message only; `respondent`, the context replies are
    /// expected from, whose loss delivers a dead message.
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if `handle` is already registered.
    pub fn with_options(
        router: &Router,
        handle: Option<u32>,
        persist: bool,
        respondent: Option<Context>,
    ) -> Result<Receiver> {
        Receiver::with_handler_options(
            router,
            HandlerOptions { handle, persist, respondent, policy: None, overwrite: false },
        )
    }

    /// A receiver registered with every [`HandlerOptions`], including a policy (as the child's
    /// `CALL_FUNCTION` receiver admits only its parents).
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if the handle is already registered.
    pub fn with_handler_options(router: &Router, mut options: HandlerOptions) -> Result<Receiver> {
        let explicit = options.handle;
        loop {
            let handle = explicit.unwrap_or_else(|| router.reserve_handle());
            let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
                let w = weak.clone();
                let handler = move |msg| Receiver::deliver(&w, msg);
                options.handle = Some(handle);
                let registered = router.add_handler(handler, options.clone()).is_ok();
                Inner {
                    router: router.clone(),
                    handle,
                    respondent: options.respondent.clone(),
                    latch: Latch::new(),
                    notify: Mutex::new(None),
                    // Not registered: dropping it must not remove whoever owns the handle.
                    closed: AtomicBool::new(!registered),
                }
            });
            if inner.closed.load(Ordering::Acquire) {
                if explicit.is_some() {
                    return Err(Error::general(format!(
                        "handle {handle} is already registered in context {}",
                        router.context_id()
                    )));
                }
                continue; // an explicit registration took the reserved handle first: retry
            }
            let recv = Receiver { inner };
            // After the broker exited, add_handler ran the handler with a dead message while the
            // receiver was being built; make sure the receiver holds one.
            if router.broker().exited() && recv.inner.latch.empty() {
                let _ = recv.inner.latch.put(Message::dead("broker exited; no more messages will be delivered"));
            }
            return Ok(recv);
        }
    }

    fn deliver(weak: &Weak<Inner>, msg: Message) {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.latch.put(msg).is_ok() {
            let notify = inner.notify.lock().clone();
            if let Some(n) = notify {
                n(&Receiver { inner });
            }
        }
    }

    /// The handle this receiver listens on.
    pub fn handle(&self) -> u32 {
        self.inner.handle
    }

    /// The router it is registered with.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// The context replies are expected from, if any.
    pub fn respondent(&self) -> Option<&Context> {
        self.inner.respondent.as_ref()
    }

    /// Install (or with `None` remove) the function called on each delivery (Mitogen `notify`).
    /// To avoid missing a message delivered while installing, check [`empty`](Receiver::empty)
    /// afterwards, as `Select` does.
    pub fn set_notify(&self, notify: Option<Notify>) {
        *self.inner.notify.lock() = notify;
    }

    /// The function installed with [`set_notify`](Receiver::set_notify), if any.
    pub fn notify(&self) -> Option<Notify> {
        self.inner.notify.lock().clone()
    }

    /// How many messages are queued (Mitogen `size()`).
    pub fn len(&self) -> usize {
        self.inner.latch.len()
    }

    /// Same as [`empty`](Receiver::empty).
    pub fn is_empty(&self) -> bool {
        self.inner.latch.empty()
    }

    /// A [`Sender`] that delivers to this receiver, from any context (Mitogen `to_sender`).
    pub fn to_sender(&self) -> Sender {
        Sender::new(self.inner.router.myself(), self.inner.handle)
    }

    /// Whether [`get`](Receiver::get) would block now.
    pub fn empty(&self) -> bool {
        self.inner.latch.empty()
    }

    /// Unregister the handle and wake every waiting thread with
    /// [`ChannelError`](crate::ChannelError) (Mitogen `close`).
    pub fn close(&self) {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.inner.router.forget_handler(self.inner.handle);
        }
        self.inner.latch.close();
    }

    /// Wait for the next message (Mitogen `get()`).
    ///
    /// # Errors
    /// [`ChannelError`](crate::ChannelError) if the message is dead or the receiver closed.
    pub fn get(&self) -> Result<Message> {
        self.finish(self.inner.latch.get())
    }

    /// The next message if one is queued (Mitogen `get(block=False)`).
    ///
    /// # Errors
    /// [`TimeoutError`](crate::TimeoutError) if none is; as [`get`](Receiver::get) otherwise.
    pub fn try_get(&self) -> Result<Message> {
        self.finish(self.inner.latch.try_get())
    }

    /// Wait at most `timeout` for the next message (Mitogen `get(timeout=...)`).
    ///
    /// # Errors
    /// [`TimeoutError`](crate::TimeoutError) when it passes; as [`get`](Receiver::get) otherwise.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Message> {
        self.finish(self.inner.latch.get_timeout(timeout))
    }

    /// Wait until `deadline` at the latest for the next message.
    ///
    /// # Errors
    /// As [`get_timeout`](Receiver::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<Message> {
        self.finish(self.inner.latch.get_deadline(deadline))
    }

    /// Wait for the next message and decode its data (Mitogen `get_data()`).
    ///
    /// # Errors
    /// As [`get`](Receiver::get) and [`Message::unpickle`].
    pub fn get_data<T: DeserializeOwned>(&self) -> Result<T> {
        self.get()?.unpickle()
    }

    /// As [`get_data`](Receiver::get_data), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`get_timeout`](Receiver::get_timeout) and [`Message::unpickle`].
    pub fn get_data_timeout<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T> {
        self.get_timeout(timeout)?.unpickle()
    }

    fn finish(&self, got: Result<Message>) -> Result<Message> {
        match got {
            Ok(msg) if msg.is_dead() => Err(Error::channel(msg.dead_reason())),
            Ok(mut msg) => {
                msg.router.get_or_insert_with(|| self.inner.router.clone());
                Ok(msg)
            }
            Err(Error::LatchError(_)) => Err(Error::channel(format!("{self:?} is closed"))),
            Err(e) => Err(e),
        }
    }

    /// Iterate over messages until a [`ChannelError`](crate::ChannelError) (Mitogen
    /// `__iter__`).
    pub fn iter(&self) -> Iter<'_> {
        Iter { recv: self }
    }
}

/// Iterator over a [`Receiver`]'s messages; ends at the first error, such as a dead message.
#[derive(Debug)]
pub struct Iter<'a> {
    recv: &'a Receiver,
}

impl Iterator for Iter<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        self.recv.get().ok()
    }
}

impl<'a> IntoIterator for &'a Receiver {
    type Item = Message;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Sends encoded messages to a handle in some context: the far end of a [`Receiver`] (Mitogen
/// `mitogen.core.Sender`).
///
/// Serializable as `(context_id, handle)`; decoded in another context it is bound to that
/// context's router and sends back to its origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Sender {
    context: Context,
    dst_handle: u32,
}

impl Sender {
    /// A sender to `dst_handle` in `context`.
    pub fn new(context: Context, dst_handle: u32) -> Sender {
        Sender { context, dst_handle }
    }

    /// The destination context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The destination handle.
    pub fn dst_handle(&self) -> u32 {
        self.dst_handle
    }

    /// Send `data`, encoded, to the remote end (Mitogen `send`).
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if `data` cannot be encoded.
    pub fn send<T: Serialize + ?Sized>(&self, data: &T) -> Result<()> {
        self.context.send(Message::pickled(data, self.dst_handle)?);
        Ok(())
    }

    /// Send a dead message, so threads waiting on the remote receiver get
    /// [`ChannelError`](crate::ChannelError) (Mitogen `close`).
    pub fn close(&self) {
        let mut msg = Message::dead("sender closed");
        msg.handle = self.dst_handle;
        self.context.send(msg);
    }
}

impl Serialize for Sender {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.context.context_id(), self.dst_handle).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Sender {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (context_id, dst_handle) = <(u32, u32)>::deserialize(d)?;
        let router = bound_router::<D::Error>("Sender")?;
        Ok(Sender::new(router.context_by_id(context_id), dst_handle))
    }
}

/// A [`Sender`] and a [`Receiver`] together: a bidirectional endpoint (Mitogen
/// `mitogen.core.Channel`). Each end must learn the other's handle before both can talk.
#[derive(Clone, Debug)]
pub struct Channel {
    sender: Sender,
    receiver: Receiver,
}

impl Channel {
    /// A channel sending to `dst_handle` in `context` and receiving on `handle` (allocated when
    /// `None`) through `router`.
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if `handle` is already registered.
    pub fn new(router: &Router, context: Context, dst_handle: u32, handle: Option<u32>) -> Result<Channel> {
        let receiver = Receiver::with_options(router, handle, true, Some(context.clone()))?;
        Ok(Channel { sender: Sender::new(context, dst_handle), receiver })
    }

    /// The sending half.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The receiving half.
    pub fn receiver(&self) -> &Receiver {
        &self.receiver
    }

    /// Send `data` to the other end.
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub fn send<T: Serialize + ?Sized>(&self, data: &T) -> Result<()> {
        self.sender.send(data)
    }

    /// Wait for the next message from the other end.
    ///
    /// # Errors
    /// As [`Receiver::get`].
    pub fn get(&self) -> Result<Message> {
        self.receiver.get()
    }

    /// Close both halves: the other end sees a dead message, local waiters a
    /// [`ChannelError`](crate::ChannelError).
    pub fn close(&self) {
        self.sender.close();
        self.receiver.close();
    }
}
