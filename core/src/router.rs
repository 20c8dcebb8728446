//! [`Router`]: delivers messages to local handlers or forwards them along streams.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::sync::{IdMap, Mutex, RwLock};

use crate::broker::{guarded, Broker};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::globals::{self, Identity};
use crate::message::Message;
use crate::stream::Stream;
use crate::wire::{DEFAULT_MAX_MESSAGE_SIZE, DEL_ROUTE, FIRST_DYNAMIC_HANDLE};

/// A handler's admission check, called as `policy(msg, stream)` with the stream the message
/// arrived on (`None` when it originated locally); `false` refuses delivery.
pub type Policy = Arc<dyn Fn(&Message, Option<&Stream>) -> bool + Send + Sync>;

type HandlerFn = Arc<dyn Fn(Message) + Send + Sync>;

/// Options of [`Router::add_handler`]; `Default` is a persistent handler on a new handle.
#[derive(Clone)]
pub struct HandlerOptions {
    /// Register this handle instead of allocating one (usually a standard handle).
    pub handle: Option<u32>,
    /// If `false`, the handler is removed after the first message.
    pub persist: bool,
    /// The context messages are expected from: when the route to it is lost, the handler
    /// receives a dead message and is removed, and messages from others are dropped.
    pub respondent: Option<Context>,
    /// Admission check; a refused message is logged and answered with a dead reply.
    pub policy: Option<Policy>,
    /// Replace a handler already registered for `handle` instead of failing (Mitogen
    /// `overwrite`), as a parent's route monitor replaces every context's stub `DEL_ROUTE`
    /// handler.
    pub overwrite: bool,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions { handle: None, persist: true, respondent: None, policy: None, overwrite: false }
    }
}

impl fmt::Debug for HandlerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerOptions")
            .field("handle", &self.handle)
            .field("persist", &self.persist)
            .field("respondent", &self.respondent.as_ref().map(Context::context_id))
            .field("policy", &self.policy.is_some())
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

struct Handler {
    func: HandlerFn,
    persist: bool,
    respondent: Option<u32>,
    policy: Option<Policy>,
}

#[derive(Default)]
struct Handlers {
    map: IdMap<u32, Handler>,
    broker_exited: bool,
}

type DisconnectHook = Arc<dyn Fn(&Router, &Stream, &[u32]) + Send + Sync>;

struct Inner {
    broker: Broker,
    identity: Identity,
    handlers: Mutex<Handlers>,
    next_handle: AtomicU32,
    routes: RwLock<IdMap<u32, Stream>>,
    /// The names contexts were made or announced with, so [`Router::context_by_id`] gives the
    /// same `Context` (with its name) for an id wherever it is asked (Mitogen's
    /// `_context_by_id` cache; names only: a cached `Context` would hold the router).
    names: RwLock<IdMap<u32, String>>,
    unidirectional: AtomicBool,
    max_message_size: AtomicUsize,
    disconnect_hooks: Mutex<Vec<DisconnectHook>>,
}

/// Routes messages between contexts and invokes local handlers (Mitogen `mitogen.core.Router`).
///
/// A cheap handle; clones are the same router. [`route`](Router::route) may be called from any
/// thread; handlers run on the broker thread. A message whose `dst_id` is this router's context
/// id is delivered to the handler registered for its `handle`; any other is forwarded on the
/// stream registered for its destination, or towards the parent.
///
/// ```
/// use mitogen_core::{Broker, HandlerOptions, Latch, Message, Router};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let broker = Broker::new().unwrap();
/// let router = Router::new(&broker);
/// let latch = Arc::new(Latch::new());
/// let l = latch.clone();
/// let handle = router
///     .add_handler(move |msg: Message| l.put(msg.unpickle::<String>()).unwrap(), HandlerOptions::default())
///     .unwrap();
/// let mut msg = Message::pickled("hello", handle).unwrap();
/// msg.dst_id = router.context_id();
/// router.route(msg);
/// assert_eq!(latch.get_timeout(Duration::from_secs(5)).unwrap().unwrap(), "hello");
/// broker.shutdown();
/// broker.join();
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Router(context {})", self.inner.identity.context_id)
    }
}

/// Why messages die, as the reason their dead replies carry.
const INVALID_HANDLE: &str = "invalid handle";
const BROKER_EXIT: &str = "broker exited; no more messages will be delivered";

impl Router {
    /// A router on `broker` with this process's [`identity`](globals::identity).
    pub fn new(broker: &Broker) -> Router {
        Router::with_identity(broker, globals::identity())
    }

    /// A router on `broker` acting as the context `identity` (several routers with different
    /// identities may share a process, for tests and for separate trust domains).
    pub fn with_identity(broker: &Broker, identity: Identity) -> Router {
        let router = Router {
            inner: Arc::new(Inner {
                broker: broker.clone(),
                identity,
                handlers: Mutex::new(Handlers::default()),
                next_handle: AtomicU32::new(FIRST_DYNAMIC_HANDLE),
                routes: RwLock::new(IdMap::default()),
                names: RwLock::new(IdMap::default()),
                unidirectional: AtomicBool::new(false),
                max_message_size: AtomicUsize::new(DEFAULT_MAX_MESSAGE_SIZE),
                disconnect_hooks: Mutex::new(Vec::new()),
            }),
        };
        let weak = Arc::downgrade(&router.inner);
        broker.on_exit(move || {
            if let Some(inner) = weak.upgrade() {
                Router { inner }.on_broker_exit();
            }
        });
        router.add_del_route_stub();
        router
    }

    /// Every context acts on `DEL_ROUTE` (Mitogen core's `Router._on_del_route`): a parent
    /// tells its child that a context the child sent messages to is gone, and callers waiting
    /// on that context wake with a dead message. A parent's route monitor replaces this with a
    /// handler that also relays the news.
    fn add_del_route_stub(&self) {
        let weak = Arc::downgrade(&self.inner);
        let stub = move |msg: Message| {
            let Some(inner) = weak.upgrade() else { return };
            let router = Router { inner };
            if msg.is_dead() {
                return;
            }
            match msg.unpickle::<u32>() {
                Ok(target) => {
                    log::debug!("{router:?}: route to {target} lost (told by {})", msg.src_id);
                    router.del_route(target);
                }
                Err(e) => log::error!("{router:?}: bad DEL_ROUTE from {}: {e}", msg.src_id),
            }
        };
        let policy: Policy = Arc::new(has_parent_authority);
        let options = HandlerOptions { handle: Some(DEL_ROUTE), policy: Some(policy), ..Default::default() };
        self.add_handler(stub, options).expect("a new router has no DEL_ROUTE handler");
    }

    /// The broker this router's streams and handlers run on.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The identity this router acts as.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// This router's context id.
    pub fn context_id(&self) -> u32 {
        self.inner.identity.context_id
    }

    /// The [`Context`] `context_id`, for sending to it (Mitogen `context_by_id`): with the name
    /// it was made or announced with, when this router knows one.
    pub fn context_by_id(&self, context_id: u32) -> Context {
        Context::new(self, context_id, self.inner.names.read().get(&context_id).cloned())
    }

    /// [`context_by_id`](Router::context_by_id), recording `name` for `context_id` first when
    /// given (Mitogen `context_by_id(context_id, name=)`); later lookups of the id carry it.
    pub fn context_by_id_named(&self, context_id: u32, name: Option<&str>) -> Context {
        if let Some(name) = name {
            self.inner.names.write().insert(context_id, name.to_owned());
        }
        self.context_by_id(context_id)
    }

    /// The [`Context`] of this router itself.
    pub fn myself(&self) -> Context {
        self.context_by_id(self.context_id())
    }

    /// Whether children may only talk to this context and its parents (Mitogen
    /// `unidirectional`).
    pub fn unidirectional(&self) -> bool {
        self.inner.unidirectional.load(Ordering::Relaxed)
    }

    /// Set [`unidirectional`](Router::unidirectional).
    pub fn set_unidirectional(&self, on: bool) {
        self.inner.unidirectional.store(on, Ordering::Relaxed);
    }

    /// Largest message data this router accepts or forwards (default 128 MiB).
    pub fn max_message_size(&self) -> usize {
        self.inner.max_message_size.load(Ordering::Relaxed)
    }

    /// Set [`max_message_size`](Router::max_message_size); streams created afterwards use it.
    pub fn set_max_message_size(&self, n: usize) {
        self.inner.max_message_size.store(n, Ordering::Relaxed);
    }

    /// Register `func` to receive every message sent to a handle in this context; returns the
    /// handle (Mitogen `add_handler`). `func` runs on the broker thread; a panic in it is logged
    /// and the broker lives on. If the broker has already exited, `func` at once receives a dead
    /// message. Handlers may route messages re-entrantly, including to themselves.
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if `options.handle` is already registered.
    pub fn add_handler(&self, func: impl Fn(Message) + Send + Sync + 'static, options: HandlerOptions) -> Result<u32> {
        let mut hs = self.inner.handlers.lock();
        let handle = match options.handle {
            Some(h) if hs.map.contains_key(&h) && !options.overwrite => {
                return Err(Error::general(format!(
                    "handle {h} is already registered in context {}",
                    self.context_id()
                )));
            }
            Some(h) => h,
            None => loop {
                let h = self.inner.next_handle.fetch_add(1, Ordering::Relaxed);
                if !hs.map.contains_key(&h) {
                    break h;
                }
            },
        };
        if hs.broker_exited {
            drop(hs);
            func(Message::dead(BROKER_EXIT));
            return Ok(handle);
        }
        let handler = Handler {
            func: Arc::new(func),
            persist: options.persist,
            respondent: options.respondent.as_ref().map(Context::context_id),
            policy: options.policy,
        };
        hs.map.insert(handle, handler);
        Ok(handle)
    }

    /// Remove the handler registered for `handle` (Mitogen `del_handler`).
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if no handler is registered for `handle`.
    pub fn del_handler(&self, handle: u32) -> Result<()> {
        match self.inner.handlers.lock().map.remove(&handle) {
            Some(_) => Ok(()),
            None => Err(Error::general(format!("handle {handle} is not registered in context {}", self.context_id()))),
        }
    }

    /// A fresh handle number for a handler about to be registered with it.
    pub(crate) fn reserve_handle(&self) -> u32 {
        self.inner.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    /// Remove the handler for `handle` if there is one; whether there was.
    pub(crate) fn forget_handler(&self, handle: u32) -> bool {
        self.inner.handlers.lock().map.remove(&handle).is_some()
    }

    /// Whether a handler is registered for `handle`.
    pub fn has_handler(&self, handle: u32) -> bool {
        self.inner.handlers.lock().map.contains_key(&handle)
    }

    /// Register `context` as reachable through `stream`, and start reading the stream (Mitogen
    /// `register`). When the stream disconnects, every route through it is deleted and handlers
    /// expecting replies from contexts behind it receive dead messages.
    pub fn register(&self, context: &Context, stream: &Stream) {
        stream.set_remote_id(context.context_id());
        if let Some(name) = context.name() {
            self.inner.names.write().insert(context.context_id(), name.to_owned());
        }
        self.inner.routes.write().insert(context.context_id(), stream.clone());
        let weak = Arc::downgrade(&self.inner);
        stream.on_disconnect_listener(move |s| {
            if let Some(inner) = weak.upgrade() {
                Router { inner }.on_stream_disconnect(s);
            }
        });
        self.inner.broker.start_receive(stream);
        if self.inner.broker.exited() {
            // Too late to be read: close it now, which also drops the route just added.
            stream.on_disconnect(&self.inner.broker);
        }
    }

    /// Call `hook(router, stream, lost_ids)` on the broker thread whenever a registered stream
    /// disconnects, after the routes to `lost_ids` through it are gone (a child exits when its
    /// parent goes away; a parent announces the lost routes with `DEL_ROUTE`).
    pub fn on_stream_disconnect_hook(&self, hook: impl Fn(&Router, &Stream, &[u32]) + Send + Sync + 'static) {
        self.inner.disconnect_hooks.lock().push(Arc::new(hook));
    }

    /// Forward messages for `target_id` on the stream that reaches `via_id` (Mitogen `add_route`).
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if no stream reaches `via_id`.
    pub fn add_route(&self, target_id: u32, via_id: u32) -> Result<()> {
        let mut routes = self.inner.routes.write();
        let stream = routes
            .get(&via_id)
            .cloned()
            .ok_or_else(|| Error::general(format!("cannot add route to {target_id}: no stream reaches {via_id}")))?;
        routes.insert(target_id, stream);
        Ok(())
    }

    /// Forget the route to `target_id`, if there is one, and deliver a dead message to every
    /// handler expecting replies from it (Mitogen `del_route` and the context's `disconnect`
    /// signal). A leaf has no route of its own to a sibling (its messages take the default
    /// route to the parent), so the handlers are told either way.
    pub fn del_route(&self, target_id: u32) {
        self.inner.routes.write().remove(&target_id);
        self.on_contexts_lost(&[target_id]);
    }

    /// Disconnect a directly connected context's stream and wait until it is gone (Mitogen
    /// `disconnect`). Routes through it are deleted and callers waiting on it wake with
    /// [`ChannelError`](crate::ChannelError). Does nothing for a context that is not directly
    /// connected.
    ///
    /// # Errors
    /// [`TimeoutError`](crate::TimeoutError) if the broker did not get to it within 30 s.
    pub fn disconnect(&self, context: &Context) -> Result<()> {
        let id = context.context_id();
        let Some(stream) = self.inner.routes.read().get(&id).filter(|s| s.remote_id() == Some(id)).cloned() else {
            return Ok(());
        };
        let done = Arc::new(crate::latch::Latch::new());
        let d = done.clone();
        stream.on_disconnect_listener(move |_| {
            let _ = d.put(());
        });
        stream.on_disconnect(&self.inner.broker);
        if self.inner.broker.on_broker_thread() {
            return Ok(());
        }
        done.get_timeout(std::time::Duration::from_secs(30))
    }

    /// [`disconnect`](Router::disconnect) every directly connected context (Mitogen
    /// `disconnect_all`).
    ///
    /// # Errors
    /// As [`disconnect`](Router::disconnect).
    pub fn disconnect_all(&self) -> Result<()> {
        for s in self.direct_streams() {
            if let Some(id) = s.remote_id() {
                self.disconnect(&self.context_by_id(id))?;
            }
        }
        Ok(())
    }

    /// Every stream a route goes through, with the id of the context at its other end: the
    /// directly connected contexts.
    pub fn direct_streams(&self) -> Vec<Stream> {
        let routes = self.inner.routes.read();
        let mut out: Vec<Stream> = Vec::new();
        for s in routes.values() {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// Every route: a context id and the stream that leads to it, by id.
    pub fn routes(&self) -> Vec<(u32, Stream)> {
        let mut routes: Vec<(u32, Stream)> = self.inner.routes.read().iter().map(|(&id, s)| (id, s.clone())).collect();
        routes.sort_by_key(|(id, _)| *id);
        routes
    }

    /// The stream leading to `dst_id`, or the parent's stream when no specific route is known
    /// (Mitogen `stream_by_id`).
    pub fn stream_by_id(&self, dst_id: u32) -> Option<Stream> {
        let routes = self.inner.routes.read();
        routes.get(&dst_id).or_else(|| self.parent_id().and_then(|p| routes.get(&p))).cloned()
    }

    fn parent_id(&self) -> Option<u32> {
        self.inner.identity.parent_id()
    }

    /// Deliver `msg` towards its destination. Safe from any thread (Mitogen `route`).
    ///
    /// From a user thread, a message for another context is written straight to its stream when
    /// nothing is queued there; local delivery and failures are handed to the broker thread.
    pub fn route(&self, msg: Message) {
        if self.inner.broker.on_broker_thread() {
            return self.async_route(msg, None);
        }
        if msg.dst_id != self.context_id() && msg.data.len() <= self.max_message_size() {
            if let Some(stream) = self.stream_by_id(msg.dst_id) {
                if !stream.is_disconnected() {
                    let (reply_to, src, dst) = (msg.reply_to, msg.src_id, msg.dst_id);
                    if stream.send(msg).is_err() {
                        self.send_dead_to(reply_to, src, &format!("no route to context {dst}: stream disconnected"));
                    }
                    return;
                }
            }
        }
        let me = self.clone();
        if let Err(e) = self.inner.broker.defer(move || me.async_route(msg, None)) {
            log::debug!("{self:?}: dropping message: {e}");
        }
    }

    fn send_dead_to(&self, reply_to: u32, src_id: u32, reason: &str) {
        let stub = Message { reply_to, src_id, ..Message::default() };
        self.maybe_send_dead(true, &stub, reason);
    }

    /// Tell whoever waits on `msg` that it died of `reason` (Mitogen `_maybe_send_dead`): a
    /// message that asked for a reply is answered with a dead message. One that did not (a
    /// reply itself, or a `Sender`'s data) but whose destination can still be reached (not
    /// `unreachable`: it was too large, say) is replaced by a dead message to the same destination and handle, so
    /// the caller waiting for that reply wakes with the reason instead of waiting for ever.
    fn maybe_send_dead(&self, unreachable: bool, msg: &Message, reason: &str) {
        if msg.is_dead() {
            return;
        }
        if msg.reply_to != 0 {
            let _ = msg.reply_message(Message::dead(reason), Some(self));
        } else if !unreachable {
            let mut dead = Message::dead(reason);
            (dead.dst_id, dead.handle) = (msg.dst_id, msg.handle);
            (dead.src_id, dead.auth_id) = (self.context_id(), self.context_id());
            self.route(dead);
        }
    }

    /// Route `msg` on the broker thread, with source verification when `in_stream` is the
    /// stream it arrived on (Mitogen `_async_route`).
    pub fn async_route(&self, mut msg: Message, in_stream: Option<&Stream>) {
        if msg.data.len() > self.max_message_size() {
            log::error!("{self:?}: dropping {msg:?}: larger than max_message_size {}", self.max_message_size());
            let reason = format!(
                "message of {} bytes is too large (max_message_size is {} bytes in context {})",
                msg.data.len(),
                self.max_message_size(),
                self.context_id()
            );
            return self.maybe_send_dead(false, &msg, &reason);
        }
        if let Some(stream) = in_stream {
            if !self.verify_source(&mut msg, stream) {
                return;
            }
        }
        if msg.dst_id == self.context_id() {
            return self.invoke(msg, in_stream);
        }
        let Some(out) = self.stream_by_id(msg.dst_id) else {
            let reason = format!("no route to context {} from context {}", msg.dst_id, self.context_id());
            log::debug!("{self:?}: {reason}: {msg:?}");
            return self.maybe_send_dead(true, &msg, &reason);
        };
        if let Some(in_s) = in_stream {
            if self.unidirectional() && !(in_s.is_privileged() || out.is_privileged()) {
                let reason = format!(
                    "message from context {:?} to context {:?} refused: router of context {} is unidirectional",
                    in_s.remote_id(),
                    out.remote_id(),
                    self.context_id()
                );
                log::error!("{self:?}: {reason}: {msg:?}");
                return self.maybe_send_dead(true, &msg, &reason);
            }
        }
        let (reply_to, src, dst) = (msg.reply_to, msg.src_id, msg.dst_id);
        if out.send(msg).is_err() {
            self.send_dead_to(reply_to, src, &format!("no route to context {dst}: stream disconnected"));
        }
    }

    /// Reverse-path filtering: `auth_id` and `src_id` must arrive on the stream that leads back to
    /// them, else the message is a spoof and is dropped.
    fn verify_source(&self, msg: &mut Message, in_stream: &Stream) -> bool {
        let expected = |id: u32| self.stream_by_id(id);
        let auth_stream = expected(msg.auth_id);
        if auth_stream.as_ref() != Some(in_stream) {
            log::error!("{self:?}: bad auth_id: got {} via {in_stream:?}, not {auth_stream:?}: {msg:?}", msg.auth_id);
            return false;
        }
        if msg.src_id != msg.auth_id {
            let src_stream = expected(msg.src_id);
            if src_stream.as_ref() != Some(in_stream) {
                log::error!("{self:?}: bad src_id: got {} via {in_stream:?}, not {src_stream:?}: {msg:?}", msg.src_id);
                return false;
            }
        }
        if let Some(auth) = in_stream.auth_id() {
            msg.auth_id = auth;
        }
        in_stream.note_egress(msg.dst_id);
        true
    }

    /// Deliver `msg` to its local handler (Mitogen `_invoke`).
    fn invoke(&self, mut msg: Message, stream: Option<&Stream>) {
        msg.router = Some(self.clone());
        // One critical section for the common case (no policy): look up, check the respondent,
        // and take a one-shot handler out, all under one lock the caller's thread also wants.
        let (func, policy) = {
            let mut hs = self.inner.handlers.lock();
            let Some(h) = hs.map.get(&msg.handle) else {
                drop(hs);
                log::debug!("{self:?}: invalid handle {}: {msg:?}", msg.handle);
                let reason = format!("{INVALID_HANDLE} {} in context {}", msg.handle, self.context_id());
                return self.maybe_send_dead(true, &msg, &reason);
            };
            if let Some(r) = h.respondent {
                if !msg.is_dead() && msg.src_id != r {
                    drop(hs);
                    log::error!("{self:?}: reply from unexpected context {} (expected {r}): {msg:?}", msg.src_id);
                    return;
                }
            }
            match (&h.policy, h.persist) {
                (None, false) => (hs.map.remove(&msg.handle).expect("present").func, None),
                (None, true) => (h.func.clone(), None),
                (Some(p), persist) => (h.func.clone(), Some((p.clone(), persist))),
            }
        };
        if let Some((policy, persist)) = policy {
            // User code: called without the lock held.
            if !policy(&msg, stream) {
                log::error!("{self:?}: policy refused message: {msg:?}");
                let reason = format!("refused by policy of handle {} in context {}", msg.handle, self.context_id());
                return self.maybe_send_dead(true, &msg, &reason);
            }
            if !persist {
                self.inner.handlers.lock().map.remove(&msg.handle);
            }
        }
        let handle = msg.handle;
        guarded(format_args!("handler for handle {handle}"), || func(msg));
    }

    /// A registered stream disconnected: drop every route through it, tell waiting handlers.
    fn on_stream_disconnect(&self, stream: &Stream) {
        let lost: Vec<u32> = {
            let mut routes = self.inner.routes.write();
            let lost: Vec<u32> = routes.iter().filter(|(_, s)| *s == stream).map(|(id, _)| *id).collect();
            for id in &lost {
                routes.remove(id);
            }
            lost
        };
        log::debug!("{self:?}: {stream:?} disconnected; lost routes to {lost:?}");
        self.on_contexts_lost(&lost);
        let hooks = self.inner.disconnect_hooks.lock().clone();
        for h in hooks {
            h(self, stream, &lost);
        }
    }

    /// Every handler whose respondent is in `lost` receives a dead message and is removed.
    fn on_contexts_lost(&self, lost: &[u32]) {
        let victims: Vec<(u32, HandlerFn)> = {
            let mut hs = self.inner.handlers.lock();
            let handles: Vec<u32> = hs
                .map
                .iter()
                .filter(|(_, h)| h.respondent.is_some_and(|r| lost.contains(&r)))
                .map(|(k, _)| *k)
                .collect();
            handles.into_iter().filter_map(|k| hs.map.remove(&k).map(|h| (k, h.func))).collect()
        };
        for (handle, func) in victims {
            let mut dead = Message::dead(&format!("lost connection to context {lost:?}"));
            dead.handle = handle;
            dead.router = Some(self.clone());
            guarded(format_args!("respondent-disconnect handler"), || func(dead));
        }
    }

    /// The broker exited: every remaining handler receives a dead message, so no caller sleeps
    /// forever.
    fn on_broker_exit(&self) {
        let handlers: Vec<(u32, Handler)> = {
            let mut hs = self.inner.handlers.lock();
            hs.broker_exited = true;
            hs.map.drain().collect()
        };
        for (handle, h) in handlers {
            let mut dead = Message::dead(BROKER_EXIT);
            dead.handle = handle;
            guarded(format_args!("broker-exit handler"), || (h.func)(dead));
        }
        self.inner.routes.write().clear();
        self.inner.disconnect_hooks.lock().clear();
    }
}

/// Policy: the message acts with the authority of this context or one of its parents
/// (Mitogen `has_parent_authority`).
pub fn has_parent_authority(msg: &Message, _stream: Option<&Stream>) -> bool {
    let identity = msg.router.as_ref().map(|r| r.identity().clone()).unwrap_or_else(globals::identity);
    msg.auth_id == identity.context_id || identity.parent_ids.contains(&msg.auth_id)
}
