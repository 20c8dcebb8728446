//! [`Context`]: a handle naming another context, for sending it messages.

use std::fmt;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Result;
use crate::message::{decode_router, Message};
use crate::receiver::Receiver;
use crate::router::Router;

/// A context reachable through a [`Router`], whatever the connection method (Mitogen
/// `mitogen.core.Context`).
///
/// Cheap to clone. Serializable: it crosses the wire as its id and name, and a decoded
/// `Context` is bound to the router that received it, so a function given a `Context` can send to
/// it.
#[derive(Clone)]
pub struct Context {
    router: Router,
    context_id: u32,
    name: Option<String>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "Context({}, {n:?})", self.context_id),
            None => write!(f, "Context({})", self.context_id),
        }
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Context) -> bool {
        self.context_id == other.context_id
    }
}

impl Eq for Context {}

impl Context {
    /// The context `context_id`, reached through `router`.
    pub fn new(router: &Router, context_id: u32, name: Option<String>) -> Context {
        Context { router: router.clone(), context_id, name }
    }

    /// The context's id.
    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    /// The context's name, when known.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The router this context is reached through.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Send `msg` to this context: `dst_id` is set to its id, and `src_id` / `auth_id` to the
    /// router's context id (Mitogen `send`).
    pub fn send(&self, mut msg: Message) {
        msg.dst_id = self.context_id;
        msg.src_id = self.router.context_id();
        msg.auth_id = self.router.context_id();
        self.router.route(msg);
    }

    /// Send `msg` with replies directed to a new [`Receiver`], which is returned (Mitogen
    /// `send_async`). If the route to this context is lost, the receiver gets a dead message.
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) only if no handle can be registered.
    pub fn send_async(&self, mut msg: Message, persist: bool) -> Result<Receiver> {
        let recv = Receiver::with_options(&self.router, None, persist, Some(self.clone()))?;
        msg.reply_to = recv.handle();
        self.send(msg);
        Ok(recv)
    }

    /// Send `msg` and wait for one reply, decoded as `T`, for at most `deadline` (Mitogen
    /// `send_await`).
    ///
    /// # Errors
    /// [`TimeoutError`](crate::TimeoutError) if no reply came in time; what the reply carries
    /// (see [`Message::unpickle`]).
    pub fn send_await<T: DeserializeOwned>(&self, msg: Message, deadline: Option<Duration>) -> Result<T> {
        let recv = self.send_async(msg, false)?;
        let reply = match deadline {
            Some(d) => recv.get_deadline(Instant::now() + d),
            None => recv.get(),
        };
        let out = reply.and_then(|m| m.unpickle());
        recv.close();
        out
    }
}

impl Serialize for Context {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (self.context_id, &self.name).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Context {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (context_id, name) = <(u32, Option<String>)>::deserialize(d)?;
        let router = bound_router::<D::Error>("Context")?;
        Ok(Context::new(&router, context_id, name))
    }
}

/// The router a value being decoded binds to, or a decode error naming `what`.
pub(crate) fn bound_router<E: serde::de::Error>(what: &str) -> std::result::Result<Router, E> {
    decode_router()
        .ok_or_else(|| E::custom(format!("a {what} can only be decoded from a message received by a router")))
}
