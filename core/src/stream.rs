//! [`Stream`]: a connection the broker reads and writes.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{IdSet, Mutex};

use crate::broker::Broker;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::router::Router;
use crate::side::Side;
use crate::sys;
use crate::wire::{Frame, FrameDecoder, HEADER_LEN};

/// Two frames sent on one stream within this interval are a burst: the second and later ones
/// are queued for the broker, which writes them together, instead of one `writev` each. An
/// isolated message (a round trip takes several times longer) is still written at once.
const BURST_WINDOW: Duration = Duration::from_micros(10);

/// Bytes read from a receive side per `read(2)` (Mitogen `CHUNK_SIZE`).
pub const CHUNK_SIZE: usize = 128 * 1024;

static NEXT_STREAM: AtomicUsize = AtomicUsize::new(1);
const NO_ID: u32 = u32::MAX;

type Listener = Box<dyn FnOnce(&Stream) + Send>;
type ShutdownHook = Box<dyn FnMut(&Stream, &Broker) + Send>;
type BytesHandler = Box<dyn FnMut(&Stream, &[u8]) + Send>;
type ReadyHandler = Box<dyn FnMut(&Stream) + Send>;

/// What a stream does with the bytes it reads: a closed set, so an enum.
enum Protocol {
    /// Framed messages handed to a router (Mitogen `MitogenProtocol`).
    Message { router: Router, decoder: FrameDecoder },
    /// Raw bytes handed to a callback; an empty slice means end of file (e.g. `IoLogger`).
    Bytes(BytesHandler),
    /// Nothing is read: a callback learns the descriptor is readable (e.g. a pidfd).
    Ready(ReadyHandler),
}

/// One queued outgoing frame: header and data kept apart so data is never copied.
struct Chunk {
    header: [u8; HEADER_LEN],
    data: Vec<u8>,
    /// Bytes of `header ++ data` already written.
    written: usize,
}

impl Chunk {
    fn len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }

    fn remaining(&self) -> [&[u8]; 2] {
        if self.written < HEADER_LEN {
            [&self.header[self.written..], &self.data]
        } else {
            [&[], &self.data[self.written - HEADER_LEN..]]
        }
    }
}

struct Tx {
    side: Option<Side>,
    /// When a frame was last written straight from `send`: a frame following within
    /// [`BURST_WINDOW`] is part of a burst and is left to the broker to write in bulk.
    last_direct: Option<Instant>,
    queue: VecDeque<Chunk>,
    pending: usize,
    /// Whether the transmit side is registered with the broker for writability.
    transmitting: bool,
}

struct Rx {
    side: Option<Side>,
    protocol: Protocol,
}

struct Inner {
    id: usize,
    name: Mutex<String>,
    broker: Broker,
    rx: Mutex<Rx>,
    tx: Mutex<Tx>,
    remote_id: AtomicU32,
    auth_id: AtomicU32,
    is_privileged: AtomicBool,
    egress_ids: Mutex<IdSet<u32>>,
    disconnected: AtomicBool,
    /// Set by a graceful shutdown with bytes still queued: disconnect once they are written.
    close_when_drained: AtomicBool,
    /// The peer announced `DETACHING`: it will outlive us, so shutdown neither asks nor kills.
    detached: AtomicBool,
    listeners: Mutex<Vec<Listener>>,
    on_shutdown: Mutex<Option<ShutdownHook>>,
    counters: Counters,
}

/// What crossed a stream, counted as it happens (relaxed atomics: a few nanoseconds each).
#[derive(Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
}

/// What crossed a [`Stream`] so far (part of Mitogen's `get_stats` / `get_stream_info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamStats {
    /// Bytes read from the peer (frames, or raw bytes for a byte stream).
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
    /// Messages received and routed.
    pub messages_in: u64,
    /// Messages accepted for sending.
    pub messages_out: u64,
}

/// A connection driven by a [`Broker`]: a receive [`Side`], an optional transmit [`Side`], and
/// what to do with what is read (Mitogen `Stream` / `BasicStream` with its `Protocol`).
///
/// Cheap to clone; clones are the same stream. Message streams decode frames and hand each
/// message to their [`Router`]; [`send`](Stream::send) may be called from any thread and writes
/// straight to the descriptor when nothing is queued, else queues the frame for the broker to
/// drain when the descriptor is writable.
#[derive(Clone)]
pub struct Stream {
    inner: Arc<Inner>,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stream({})", self.name())
    }
}

impl PartialEq for Stream {
    fn eq(&self, other: &Stream) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Stream {}

impl Stream {
    fn build(broker: &Broker, name: String, rx: Side, tx: Option<Side>, protocol: Protocol) -> Stream {
        Stream {
            inner: Arc::new(Inner {
                id: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
                name: Mutex::new(name),
                broker: broker.clone(),
                rx: Mutex::new(Rx { side: Some(rx), protocol }),
                tx: Mutex::new(Tx {
                    side: tx,
                    last_direct: None,
                    queue: VecDeque::new(),
                    pending: 0,
                    transmitting: false,
                }),
                remote_id: AtomicU32::new(NO_ID),
                auth_id: AtomicU32::new(NO_ID),
                is_privileged: AtomicBool::new(false),
                egress_ids: Mutex::new(IdSet::default()),
                disconnected: AtomicBool::new(false),
                close_when_drained: AtomicBool::new(false),
                detached: AtomicBool::new(false),
                listeners: Mutex::new(Vec::new()),
                on_shutdown: Mutex::new(None),
                counters: Counters::default(),
            }),
        }
    }

    /// A message stream over one bidirectional descriptor (a socket or TTY), feeding `router`.
    ///
    /// The descriptor is duplicated so the receive and transmit sides are separate descriptors,
    /// each registered with the broker on its own. Call [`Router::register`] to start it.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the descriptor cannot be duplicated or prepared.
    pub fn message(router: &Router, name: impl Into<String>, fd: OwnedFd) -> Result<Stream> {
        let rfd = sys::dup_cloexec(fd.as_fd()).map_err(|e| Error::stream_io("cannot dup stream fd", e))?;
        Stream::message_pair(router, name, rfd, fd)
    }

    /// A message stream reading `rfd` and writing `wfd` (for example a child's stdout and stdin).
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if a descriptor cannot be prepared.
    pub fn message_pair(router: &Router, name: impl Into<String>, rfd: OwnedFd, wfd: OwnedFd) -> Result<Stream> {
        let protocol =
            Protocol::Message { router: router.clone(), decoder: FrameDecoder::new(router.max_message_size()) };
        let rx = Side::new(rfd, true)?;
        let tx = Side::new(wfd, false)?;
        Ok(Stream::build(router.broker(), name.into(), rx, Some(tx), protocol))
    }

    /// A receive-only stream calling `on_data` with every chunk read from `rfd`, and once with
    /// an empty slice at end of file. Used for stdio forwarding (Mitogen `IoLogger`).
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the descriptor cannot be prepared.
    pub fn bytes(
        broker: &Broker,
        name: impl Into<String>,
        rfd: OwnedFd,
        keep_alive: bool,
        on_data: impl FnMut(&Stream, &[u8]) + Send + 'static,
    ) -> Result<Stream> {
        let rx = Side::new(rfd, keep_alive)?;
        Ok(Stream::build(broker, name.into(), rx, None, Protocol::Bytes(Box::new(on_data))))
    }

    /// A stream that reads nothing: `on_ready` is called on the broker thread each time `fd`
    /// becomes readable (for example a pidfd when its process exits). `on_ready` decides when to
    /// [`on_disconnect`](Stream::on_disconnect) it.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the descriptor cannot be prepared.
    pub fn readiness(
        broker: &Broker,
        name: impl Into<String>,
        fd: OwnedFd,
        keep_alive: bool,
        on_ready: impl FnMut(&Stream) + Send + 'static,
    ) -> Result<Stream> {
        let rx = Side::new(fd, keep_alive)?;
        Ok(Stream::build(broker, name.into(), rx, None, Protocol::Ready(Box::new(on_ready))))
    }

    pub(crate) fn id(&self) -> usize {
        self.inner.id
    }

    /// The stream's name, for log lines.
    pub fn name(&self) -> String {
        self.inner.name.lock().clone()
    }

    /// Rename the stream.
    pub fn set_name(&self, name: impl Into<String>) {
        *self.inner.name.lock() = name.into();
    }

    /// The broker driving this stream.
    pub fn broker(&self) -> &Broker {
        &self.inner.broker
    }

    /// The id of the context at the other end, once registered (Mitogen `remote_id`).
    pub fn remote_id(&self) -> Option<u32> {
        match self.inner.remote_id.load(Ordering::Acquire) {
            NO_ID => None,
            id => Some(id),
        }
    }

    pub(crate) fn set_remote_id(&self, id: u32) {
        self.inner.remote_id.store(id, Ordering::Release);
    }

    /// When set, every message arriving on this stream acts with this authority, after source
    /// verification (Mitogen `MitogenProtocol.auth_id`).
    pub fn auth_id(&self) -> Option<u32> {
        match self.inner.auth_id.load(Ordering::Acquire) {
            NO_ID => None,
            id => Some(id),
        }
    }

    /// Set [`auth_id`](Stream::auth_id).
    pub fn set_auth_id(&self, id: Option<u32>) {
        self.inner.auth_id.store(id.unwrap_or(NO_ID), Ordering::Release);
    }

    /// Whether the peer is trusted to reach anywhere even in `unidirectional` mode (a parent).
    pub fn is_privileged(&self) -> bool {
        self.inner.is_privileged.load(Ordering::Acquire)
    }

    /// Set [`is_privileged`](Stream::is_privileged).
    pub fn set_privileged(&self, privileged: bool) {
        self.inner.is_privileged.store(privileged, Ordering::Release);
    }

    /// Record that the peer sent a message to `dst_id` (Mitogen `egress_ids`).
    pub(crate) fn note_egress(&self, dst_id: u32) {
        self.inner.egress_ids.lock().insert(dst_id);
    }

    /// Every context id the peer ever sent a message to.
    pub fn egress_ids(&self) -> HashSet<u32> {
        self.inner.egress_ids.lock().iter().copied().collect()
    }

    /// Mark the peer as detached (it sent `DETACHING`): a graceful shutdown just disconnects
    /// the stream, without running the hook set with [`set_on_shutdown`](Stream::set_on_shutdown).
    pub fn set_detached(&self) {
        self.inner.detached.store(true, Ordering::Release);
    }

    /// Whether [`set_detached`](Stream::set_detached) was called.
    pub fn is_detached(&self) -> bool {
        self.inner.detached.load(Ordering::Acquire)
    }

    /// Whether [`on_disconnect`](Stream::on_disconnect) has run.
    pub fn is_disconnected(&self) -> bool {
        self.inner.disconnected.load(Ordering::Acquire)
    }

    /// Whether the broker's graceful shutdown should wait for this stream.
    pub fn keep_alive(&self) -> bool {
        self.inner.rx.lock().side.as_ref().is_some_and(|s| s.keep_alive() && !s.closed())
    }

    /// Call `f` once, on the broker thread, when the stream disconnects (Mitogen's
    /// `listen(stream, 'disconnect', f)`). Called at once if it already has.
    pub fn on_disconnect_listener(&self, f: impl FnOnce(&Stream) + Send + 'static) {
        let mut ls = self.inner.listeners.lock();
        if self.is_disconnected() {
            drop(ls);
            f(self);
        } else {
            ls.push(Box::new(f));
        }
    }

    /// Replace what [`on_shutdown`](Stream::on_shutdown) does: by default it disconnects at
    /// once; a parent's stream to a child instead asks the child to exit and waits for it.
    pub fn set_on_shutdown(&self, f: impl FnMut(&Stream, &Broker) + Send + 'static) {
        *self.inner.on_shutdown.lock() = Some(Box::new(f));
    }

    /// What crossed this stream so far.
    pub fn stats(&self) -> StreamStats {
        let c = &self.inner.counters;
        StreamStats {
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            messages_in: c.messages_in.load(Ordering::Relaxed),
            messages_out: c.messages_out.load(Ordering::Relaxed),
        }
    }

    /// Bytes queued for transmission and not yet written (Mitogen `pending_bytes()`).
    pub fn pending_bytes(&self) -> usize {
        self.inner.tx.lock().pending
    }

    pub(crate) fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.rx.lock().side.as_ref().and_then(|s| s.fd().map(|_| s.raw_fd()))
    }

    pub(crate) fn tx_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.tx.lock().side.as_ref().and_then(|s| s.fd().map(|_| s.raw_fd()))
    }

    /// Queue `msg` for transmission, writing it at once when nothing else is queued. Safe from
    /// any thread.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the stream is disconnected; the message is dropped.
    pub fn send(&self, msg: Message) -> Result<()> {
        let mut chunk = Chunk { header: msg.header(), data: msg.data, written: 0 };
        let mut guard = self.inner.tx.lock();
        let tx = &mut *guard;
        let Some(side) = tx.side.as_ref() else {
            return Err(Error::stream(format!("{}: stream is disconnected", self.name())));
        };
        self.inner.counters.messages_out.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let in_burst = tx.last_direct.is_some_and(|t| now.duration_since(t) < BURST_WINDOW);
        if tx.queue.is_empty() && !in_burst && !WRITE_BEHIND.with(Cell::get) {
            tx.last_direct = Some(now);
            let [a, b] = chunk.remaining();
            match side.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)]) {
                Ok(Some(n)) => {
                    chunk.written = n;
                    self.inner.counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(None) => {
                    drop(guard);
                    self.disconnect_later();
                    return Err(Error::stream(format!("{}: peer disconnected", self.name())));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    drop(guard);
                    log::error!("{}: write failed: {e}", self.name());
                    self.disconnect_later();
                    return Err(Error::stream_io(format!("{}: write failed", self.name()), e));
                }
            }
            if chunk.written == chunk.len() {
                return Ok(());
            }
        }
        tx.pending += chunk.len() - chunk.written;
        tx.queue.push_back(chunk);
        if !tx.transmitting {
            tx.transmitting = true;
            drop(guard);
            self.inner.broker.start_transmit(self);
        }
        Ok(())
    }

    fn disconnect_later(&self) {
        let me = self.clone();
        let broker = self.inner.broker.clone();
        if broker.defer(move || me.on_disconnect(&me.inner.broker.clone())).is_err() {
            // No broker thread any more: nothing to race with, so disconnect here.
            self.disconnect_now(&broker);
        }
    }

    /// Write `bytes` to the transmit side as they are, bypassing framing: for fault-injection
    /// tests that must send what a broken or hostile peer would.
    #[doc(hidden)]
    pub fn write_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let tx = self.inner.tx.lock();
        let side = tx.side.as_ref().ok_or_else(|| std::io::Error::from(io::ErrorKind::NotConnected))?;
        let mut off = 0;
        while off < bytes.len() {
            match side.write(&bytes[off..]) {
                Ok(Some(n)) => off += n,
                Ok(None) => return Err(io::ErrorKind::BrokenPipe.into()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Called by the broker when the receive side is readable: read until it would block, decode,
    /// and dispatch. End of file or a protocol error disconnects the stream (Mitogen
    /// `on_receive`).
    pub fn on_receive(&self, broker: &Broker) {
        if let Some(mut f) = self.take_ready_handler() {
            f(self);
            let mut rx = self.inner.rx.lock();
            if !self.is_disconnected() {
                rx.protocol = Protocol::Ready(f);
            }
            return;
        }
        let mut frames = Vec::new();
        let before = self.inner.counters.bytes_in.load(Ordering::Relaxed);
        let outcome = self.read_all(&mut frames);
        // The I/O log (Mitogen's `mitogen.io` logger): off unless asked for, and never
        // forwarded, since forwarding it would make more of it.
        if log::log_enabled!(target: "mitogen::io", log::Level::Debug) {
            let n = self.inner.counters.bytes_in.load(Ordering::Relaxed) - before;
            log::debug!(target: "mitogen::io", "{}: read {n} bytes, {} frames", self.name(), frames.len());
        }
        if !frames.is_empty() {
            self.inner.counters.messages_in.fetch_add(frames.len() as u64, Ordering::Relaxed);
            let router = match &self.inner.rx.lock().protocol {
                Protocol::Message { router, .. } => Some(router.clone()),
                Protocol::Bytes(_) | Protocol::Ready(_) => None,
            };
            for frame in frames {
                if let Some(router) = &router {
                    router.async_route(Message::from_frame(frame), Some(self));
                }
            }
        }
        match outcome {
            Ok(true) => {}
            Ok(false) => self.on_disconnect(broker),
            Err(e) => {
                log::error!("{}: {e}; disconnecting", self.name());
                self.on_disconnect(broker);
            }
        }
    }

    /// The callback of a readiness stream, taken out so it may disconnect the stream.
    fn take_ready_handler(&self) -> Option<ReadyHandler> {
        let mut rx = self.inner.rx.lock();
        if !matches!(rx.protocol, Protocol::Ready(_)) {
            return None;
        }
        match std::mem::replace(&mut rx.protocol, Protocol::Bytes(Box::new(|_, _| {}))) {
            Protocol::Ready(f) => Some(f),
            _ => None,
        }
    }

    /// Read until `EAGAIN`. `Ok(false)` is end of file.
    fn read_all(&self, frames: &mut Vec<Frame>) -> Result<bool> {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let mut rx = self.inner.rx.lock();
            let rx = &mut *rx;
            let Some(side) = rx.side.as_ref() else {
                return Ok(false);
            };
            loop {
                if let Protocol::Message { decoder, .. } = &mut rx.protocol {
                    if let Some((vec, left)) = decoder.large_frame_buffer(CHUNK_SIZE) {
                        let n = match side.read_into_spare(vec, left) {
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                            Err(e) => return Err(Error::stream_io(format!("read failed on fd {}", side.raw_fd()), e)),
                        };
                        if n == 0 {
                            return Ok(false);
                        }
                        self.inner.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                        decoder.finish_direct(frames);
                        continue;
                    }
                }
                let n = match side.read(&mut buf[..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                    Err(e) => return Err(Error::stream_io(format!("read failed on fd {}", side.raw_fd()), e)),
                };
                self.inner.counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                match &mut rx.protocol {
                    Protocol::Message { decoder, .. } => {
                        if n > 0 {
                            decoder.feed(&buf[..n], frames)?;
                        }
                    }
                    Protocol::Bytes(f) => f(self, &buf[..n]),
                    Protocol::Ready(_) => return Ok(true),
                }
                if n == 0 {
                    return Ok(false);
                }
            }
        })
    }

    /// Called by the broker when the transmit side is writable: write queued frames until the
    /// descriptor is full or the queue is empty (Mitogen `on_transmit`).
    pub fn on_transmit(&self, broker: &Broker) {
        let before = self.inner.counters.bytes_out.load(Ordering::Relaxed);
        let drained = self.write_queued();
        if log::log_enabled!(target: "mitogen::io", log::Level::Debug) {
            let n = self.inner.counters.bytes_out.load(Ordering::Relaxed) - before;
            log::debug!(target: "mitogen::io", "{}: wrote {n} bytes; queue drained: {drained}", self.name());
        }
        if drained {
            broker.stop_transmit(self);
            if self.inner.close_when_drained.load(Ordering::Acquire) {
                self.on_disconnect(broker);
            }
        }
    }

    /// Write queued frames until the descriptor is full; returns whether the queue emptied (and
    /// `transmitting` was cleared). The lock is released before the caller unregisters, since
    /// unregistering reads the descriptor under the same lock.
    fn write_queued(&self) -> bool {
        let mut guard = self.inner.tx.lock();
        let tx = &mut *guard;
        let Some(side) = tx.side.as_ref() else {
            return false;
        };
        while !tx.queue.is_empty() {
            let mut iov = Vec::with_capacity(2 * tx.queue.len().min(64));
            for c in tx.queue.iter().take(64) {
                let [a, b] = c.remaining();
                iov.push(io::IoSlice::new(a));
                iov.push(io::IoSlice::new(b));
            }
            let mut n = match side.write_vectored(&iov) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    drop(iov);
                    drop(guard);
                    self.disconnect_later();
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    drop(iov);
                    // Log only after unlocking: a log forwarder may route through this stream.
                    drop(guard);
                    log::error!("{}: write failed: {e}; disconnecting", self.name());
                    self.disconnect_later();
                    return false;
                }
            };
            drop(iov);
            tx.pending -= n;
            self.inner.counters.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            while n > 0 {
                let c = tx.queue.front_mut().expect("written bytes belong to queued chunks");
                let left = c.len() - c.written;
                if n >= left {
                    n -= left;
                    tx.queue.pop_front();
                } else {
                    c.written += n;
                    n = 0;
                }
            }
        }
        tx.transmitting = false;
        true
    }

    /// Called by the broker's graceful shutdown (Mitogen `on_shutdown`): runs the hook set with
    /// [`set_on_shutdown`](Stream::set_on_shutdown), or disconnects once every queued byte is
    /// written (within the broker's grace period).
    pub fn on_shutdown(&self, broker: &Broker) {
        let hook = if self.is_detached() { None } else { self.inner.on_shutdown.lock().take() };
        match hook {
            Some(mut f) => {
                f(self, broker);
                let mut slot = self.inner.on_shutdown.lock();
                if slot.is_none() {
                    *slot = Some(f);
                }
            }
            None => self.disconnect_when_drained(broker),
        }
    }

    /// Disconnect once every queued byte is written: at once when nothing is queued, else
    /// when the transmit side drains (broker thread only, where `on_transmit` also runs).
    pub(crate) fn disconnect_when_drained(&self, broker: &Broker) {
        let tx = self.inner.tx.lock();
        if tx.queue.is_empty() {
            drop(tx);
            self.on_disconnect(broker);
        } else {
            self.inner.close_when_drained.store(true, Ordering::Release);
        }
    }

    /// Disconnect: unregister from the broker, close both sides, and tell every listener
    /// (Mitogen `on_disconnect`). Runs once; from a thread other than the broker's, it is
    /// deferred to the broker.
    pub fn on_disconnect(&self, broker: &Broker) {
        if !broker.on_broker_thread() {
            return self.disconnect_later();
        }
        log::debug!(target: "mitogen::io", "{}: disconnecting ({:?})", self.name(), self.stats());
        self.disconnect_now(broker);
    }

    fn disconnect_now(&self, broker: &Broker) {
        if self.inner.disconnected.swap(true, Ordering::AcqRel) {
            return;
        }
        log::debug!("{}: disconnecting", self.name());
        broker.unregister(self);
        if let Some(mut s) = self.inner.rx.lock().side.take() {
            s.close();
        }
        {
            let mut tx = self.inner.tx.lock();
            if let Some(mut s) = tx.side.take() {
                s.close();
            }
            tx.queue.clear();
            tx.pending = 0;
        }
        let listeners = std::mem::take(&mut *self.inner.listeners.lock());
        for f in listeners {
            f(self);
        }
        // Drop the protocol (and its router reference) so stream <-> router cycles end here.
        self.inner.rx.lock().protocol = Protocol::Bytes(Box::new(|_, _| {}));
    }
}

impl crate::broker::Source for Stream {
    fn source_id(&self) -> usize {
        self.id()
    }

    fn rx_fd(&self) -> Option<std::os::fd::RawFd> {
        Stream::rx_fd(self)
    }

    fn tx_fd(&self) -> Option<std::os::fd::RawFd> {
        Stream::tx_fd(self)
    }

    fn on_receive(&self, broker: &Broker) {
        Stream::on_receive(self, broker);
    }

    fn on_transmit(&self, broker: &Broker) {
        Stream::on_transmit(self, broker);
    }

    fn on_shutdown(&self, broker: &Broker) {
        Stream::on_shutdown(self, broker);
    }

    fn on_disconnect(&self, broker: &Broker) {
        Stream::on_disconnect(self, broker);
    }

    fn keep_alive(&self) -> bool {
        Stream::keep_alive(self)
    }

    fn describe(&self) -> String {
        format!("{self:?}")
    }
}

thread_local! {
    /// Set while this thread has more messages to send right behind this one.
    static WRITE_BEHIND: Cell<bool> = const { Cell::new(false) };
}

/// While `on`, [`Stream::send`] on this thread queues frames for the broker to write instead of
/// writing them at once, so a burst leaves in a few large writes instead of one `writev` per
/// message. A child sets it while replying with more calls already waiting.
pub(crate) fn set_write_behind(on: bool) {
    WRITE_BEHIND.with(|w| w.set(on));
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; CHUNK_SIZE].into_boxed_slice());
}
