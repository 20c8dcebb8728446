//! [`Broker`]: the one thread per process that owns the poller and runs every stream and handler.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::sync::Mutex;
use crate::sys;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::error::{Error, Result};

const WAKER: Token = Token(usize::MAX);

thread_local! {
    /// Set while this thread is inside the broker's calls into `mio`.
    static IN_POLLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` (a call into `mio`) marked as inside the poller's bookkeeping: what `mio` logs there
/// (trace records of registering descriptors) is kept out of forwarding to the master, since
/// forwarding a record registers a stream for writing, which would log another (see
/// [`in_poller_call`]).
fn in_poller<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_POLLER.with(|g| g.replace(true));
    let r = f();
    IN_POLLER.with(|g| g.set(was));
    r
}

/// Whether the calling thread is inside the broker's calls into `mio`: a child's log forwarder
/// writes what is logged there to the debug log only.
pub(crate) fn in_poller_call() -> bool {
    IN_POLLER.with(std::cell::Cell::get)
}

type Job = Box<dyn FnOnce() + Send>;

/// What the broker polls and calls back: a connection with a receive side and a transmit side,
/// each a descriptor (Mitogen's `Stream` as the broker sees it). The broker knows nothing else
/// about it; [`Stream`](crate::Stream) is the one implementation, for message, byte and
/// readiness streams. Callbacks run on the broker thread.
pub trait Source: Send + Sync + 'static {
    /// A number unique among live sources, for the poller's tokens.
    fn source_id(&self) -> usize;
    /// The receive side's descriptor, `None` once closed.
    fn rx_fd(&self) -> Option<RawFd>;
    /// The transmit side's descriptor, `None` once closed.
    fn tx_fd(&self) -> Option<RawFd>;
    /// The receive side is readable (or hung up).
    fn on_receive(&self, broker: &Broker);
    /// The transmit side is writable (or hung up).
    fn on_transmit(&self, broker: &Broker);
    /// The broker began a graceful shutdown.
    fn on_shutdown(&self, broker: &Broker);
    /// Disconnect now: the shutdown's grace period is over.
    fn on_disconnect(&self, broker: &Broker);
    /// Whether the graceful shutdown waits for this source to disconnect.
    fn keep_alive(&self) -> bool;
    /// A name for log lines.
    fn describe(&self) -> String;
}

/// Settings for [`Broker::with_options`].
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Name of the broker thread.
    pub name: String,
    /// Grace period for streams to disconnect during [`Broker::shutdown`] before they are forced
    /// (Mitogen `shutdown_timeout`: 3 s in children, 5 s in the master).
    pub shutdown_timeout: Duration,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions { name: "mitogen-broker".into(), shutdown_timeout: Duration::from_secs(3) }
    }
}

struct Deferred {
    queue: Vec<Job>,
    exited: bool,
}

#[derive(Default)]
struct Registered {
    readers: HashMap<usize, Arc<dyn Source>>,
    writers: HashMap<usize, Arc<dyn Source>>,
    on_exit: Vec<Job>,
    /// Runs after every `on_exit` callback: a child's last act, ending its process.
    exit_action: Option<Job>,
    timers: Vec<Timer>,
    next_timer: u64,
}

struct Timer {
    id: u64,
    when: Instant,
    job: Job,
}

/// A timer set with [`Broker::timer`]; [`cancel`](TimerHandle::cancel) it to stop it firing.
#[derive(Debug)]
pub struct TimerHandle {
    broker: Broker,
    id: u64,
}

impl TimerHandle {
    /// Stop the timer if it has not fired yet.
    pub fn cancel(&self) {
        self.broker.inner.registered.lock().timers.retain(|t| t.id != self.id);
    }
}

struct Inner {
    name: String,
    registry: Registry,
    waker: mio::Waker,
    deferred: Mutex<Deferred>,
    registered: Mutex<Registered>,
    alive: AtomicBool,
    /// The broker thread's `sys::thread::current_id`.
    thread: OnceLock<usize>,
    join: Mutex<Option<sys::thread::Thread>>,
    shutdown_timeout: Duration,
}

/// Runs I/O multiplexing and every handler on one private thread (Mitogen `mitogen.core.Broker`).
///
/// A cheap handle: clones refer to the same broker. The broker thread alone runs the `mio` poll
/// over every registered stream's descriptors; other threads hand it work with
/// [`defer`](Broker::defer), which enqueues a closure and wakes the thread through one
/// [`mio::Waker`].
///
/// ```
/// use mitogen_core::{Broker, Latch};
/// use std::sync::Arc;
///
/// let broker = Broker::new().unwrap();
/// let latch = Arc::new(Latch::new());
/// let l = latch.clone();
/// let b = broker.clone();
/// broker.defer(move || l.put(b.on_broker_thread()).unwrap()).unwrap();
/// assert!(latch.get().unwrap());
/// broker.shutdown();
/// broker.join();
/// assert!(broker.defer(|| ()).is_err());
/// ```
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Broker({})", self.inner.name)
    }
}

impl Broker {
    /// Start a broker with the default options.
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if the poller or its thread cannot be created.
    pub fn new() -> Result<Broker> {
        Broker::with_options(BrokerOptions::default())
    }

    /// Start a broker thread with `options`.
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if the poller or its thread cannot be created.
    pub fn with_options(options: BrokerOptions) -> Result<Broker> {
        let fail = |what: &str, e: std::io::Error| Error::general(format!("broker: cannot create {what}: {e}"));
        let poll = Poll::new().map_err(|e| fail("poller", e))?;
        let registry = poll.registry().try_clone().map_err(|e| fail("registry", e))?;
        let waker = mio::Waker::new(poll.registry(), WAKER).map_err(|e| fail("waker", e))?;
        let broker = Broker {
            inner: Arc::new(Inner {
                name: options.name.clone(),
                registry,
                waker,
                deferred: Mutex::new(Deferred { queue: Vec::new(), exited: false }),
                registered: Mutex::new(Registered::default()),
                alive: AtomicBool::new(true),
                thread: OnceLock::new(),
                join: Mutex::new(None),
                shutdown_timeout: options.shutdown_timeout,
            }),
        };
        let b = broker.clone();
        // Started so that a forked child can start it, and running when this returns (a
        // context whose broker never ran must not be reported connected): see `sys::thread`.
        let handle =
            sys::thread::spawn(&options.name, 2 << 20, move || b.broker_main(poll)).map_err(|e| fail("thread", e))?;
        *broker.inner.join.lock() = Some(handle);
        Ok(broker)
    }

    /// Whether the calling thread is this broker's thread.
    pub fn on_broker_thread(&self) -> bool {
        self.inner.thread.get() == Some(&sys::thread::current_id())
    }

    /// Whether [`shutdown`](Broker::shutdown) has been asked for (the broker may still be
    /// disconnecting streams).
    pub fn shutting_down(&self) -> bool {
        !self.inner.alive.load(Ordering::Acquire)
    }

    /// Whether the broker thread has finished its shutdown.
    pub fn exited(&self) -> bool {
        self.inner.deferred.lock().exited
    }

    /// The graceful shutdown grace period.
    pub fn shutdown_timeout(&self) -> Duration {
        self.inner.shutdown_timeout
    }

    /// Run `f` on the broker thread: at once when called from it, else as soon as the thread
    /// wakes. Safe from any thread. A panic in `f` is logged and the broker lives on.
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if the broker has exited; `f` is dropped unrun.
    pub fn defer(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        if self.on_broker_thread() {
            guarded(format_args!("deferred call"), f);
            return Ok(());
        }
        self.defer_queued(f)
    }

    /// Queue `f` to run on the broker thread, never at once, even when called from it: then it
    /// runs once the work in hand is done, at the end of the current poll iteration, with no
    /// lock of the broker's held (what a log record seen inside the broker uses to be sent).
    ///
    /// # Errors
    /// [`GeneralError`](crate::GeneralError) if the broker has exited; `f` is dropped unrun.
    pub(crate) fn defer_queued(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        let mut d = self.inner.deferred.lock();
        if d.exited {
            return Err(Error::general(format!("{}: broker has exited; cannot defer work", self.inner.name)));
        }
        let was_empty = d.queue.is_empty();
        d.queue.push(Box::new(f));
        drop(d);
        if was_empty && !self.on_broker_thread() {
            self.wake();
        }
        Ok(())
    }

    fn wake(&self) {
        if let Err(e) = self.inner.waker.wake() {
            log::error!("{}: cannot wake broker thread: {e}", self.inner.name);
        }
    }

    /// Call `f` on the broker thread after it has disconnected every stream, just before it
    /// exits (Mitogen's broker `exit` signal). Called at once if the broker already exited.
    pub fn on_exit(&self, f: impl FnOnce() + Send + 'static) {
        if self.exited() {
            return f();
        }
        self.inner.registered.lock().on_exit.push(Box::new(f));
    }

    /// Run `f` as the broker thread's very last act, after every [`on_exit`](Broker::on_exit)
    /// callback (a child ends its process here). Replaces an earlier action.
    pub(crate) fn set_exit_action(&self, f: impl FnOnce() + Send + 'static) {
        self.inner.registered.lock().exit_action = Some(Box::new(f));
    }

    /// Run `f` on the broker thread once `delay` has passed (Mitogen `Broker.timers`). Timers
    /// still pending when the broker exits never fire.
    pub fn timer(&self, delay: Duration, f: impl FnOnce() + Send + 'static) -> TimerHandle {
        let when = Instant::now() + delay;
        let mut reg = self.inner.registered.lock();
        reg.next_timer += 1;
        let id = reg.next_timer;
        reg.timers.push(Timer { id, when, job: Box::new(f) });
        drop(reg);
        if !self.on_broker_thread() {
            self.wake();
        }
        TimerHandle { broker: self.clone(), id }
    }

    /// Time until the earliest timer is due (`None`: no timers).
    fn next_timeout(&self) -> Option<Duration> {
        let reg = self.inner.registered.lock();
        reg.timers.iter().map(|t| t.when).min().map(|w| w.saturating_duration_since(Instant::now()))
    }

    fn run_due_timers(&self) {
        let now = Instant::now();
        let due: Vec<Timer> = {
            let mut reg = self.inner.registered.lock();
            let (due, rest) = std::mem::take(&mut reg.timers).into_iter().partition(|t| t.when <= now);
            reg.timers = rest;
            due
        };
        for t in due {
            guarded(format_args!("timer"), t.job);
        }
    }

    /// Start reading `stream`'s receive side; [`Source::on_receive`] runs when it is readable.
    /// Safe from any thread.
    pub fn start_receive(&self, source: &(impl Source + Clone)) {
        let (b, s): (Broker, Arc<dyn Source>) = (self.clone(), Arc::new(source.clone()));
        self.defer_or_log(move || b.register(&s, true));
    }

    /// Stop reading `stream`'s receive side. Safe from any thread.
    pub fn stop_receive(&self, source: &(impl Source + Clone)) {
        let (b, s): (Broker, Arc<dyn Source>) = (self.clone(), Arc::new(source.clone()));
        self.defer_or_log(move || b.deregister(&*s, true));
    }

    /// Start waiting for `stream`'s transmit side to be writable; [`Source::on_transmit`] runs
    /// when it is. Safe from any thread (Mitogen `_start_transmit`, broker-only there).
    pub fn start_transmit(&self, source: &(impl Source + Clone)) {
        let (b, s): (Broker, Arc<dyn Source>) = (self.clone(), Arc::new(source.clone()));
        self.defer_or_log(move || b.register(&s, false));
    }

    /// Stop waiting for `stream`'s transmit side. Safe from any thread.
    pub fn stop_transmit(&self, source: &(impl Source + Clone)) {
        let (b, s): (Broker, Arc<dyn Source>) = (self.clone(), Arc::new(source.clone()));
        self.defer_or_log(move || b.deregister(&*s, false));
    }

    fn defer_or_log(&self, f: impl FnOnce() + Send + 'static) {
        if let Err(e) = self.defer(f) {
            log::debug!("{e}");
        }
    }

    /// Register one side of `stream` (broker thread only). No lock is held while `mio` is
    /// called: it logs, and a logger may call back into the broker (its records are not
    /// forwarded to the master: see [`in_poller_call`]).
    fn register(&self, stream: &Arc<dyn Source>, receive: bool) {
        let id = stream.source_id();
        let (fd, interest, token) = if receive {
            (stream.rx_fd(), Interest::READABLE, Token(id * 2))
        } else {
            (stream.tx_fd(), Interest::WRITABLE, Token(id * 2 + 1))
        };
        let Some(fd) = fd else { return };
        let present = |reg: &Registered| if receive { &reg.readers } else { &reg.writers }.contains_key(&id);
        if present(&self.inner.registered.lock()) {
            return;
        }
        match in_poller(|| self.inner.registry.register(&mut SourceFd(&fd), token, interest)) {
            Ok(()) => {
                let mut reg = self.inner.registered.lock();
                let map = if receive { &mut reg.readers } else { &mut reg.writers };
                map.insert(id, stream.clone());
            }
            Err(e) => log::error!("{}: cannot register {} fd {fd}: {e}", self.inner.name, stream.describe()),
        }
    }

    /// Deregister one side of `stream` (broker thread only), while its descriptor is still open;
    /// `mio` is called with no lock held, as in [`register`](Broker::register).
    fn deregister(&self, stream: &dyn Source, receive: bool) {
        let fd = if receive { stream.rx_fd() } else { stream.tx_fd() };
        let removed = {
            let mut reg = self.inner.registered.lock();
            let map = if receive { &mut reg.readers } else { &mut reg.writers };
            map.remove(&stream.source_id()).is_some()
        };
        if let (true, Some(fd)) = (removed, fd) {
            let _ = in_poller(|| self.inner.registry.deregister(&mut SourceFd(&fd)));
        }
    }

    /// Remove both sides of `stream` from the poller; called by [`Source::on_disconnect`].
    pub(crate) fn unregister(&self, stream: &dyn Source) {
        self.deregister(stream, true);
        self.deregister(stream, false);
    }

    /// Whether any stream being read asks the shutdown to wait for it (Mitogen `keep_alive()`).
    pub fn keep_alive(&self) -> bool {
        let readers: Vec<Arc<dyn Source>> = self.inner.registered.lock().readers.values().cloned().collect();
        readers.iter().any(|s| s.keep_alive())
    }

    /// Ask the broker to shut down gracefully: every stream's [`Source::on_shutdown`] runs, the
    /// broker waits up to `shutdown_timeout` for them to disconnect, then forces the rest. Safe
    /// from any thread; returns at once (see [`join`](Broker::join)).
    pub fn shutdown(&self) {
        self.inner.alive.store(false, Ordering::Release);
        self.wake();
    }

    /// Wait for the broker thread to exit; call after [`shutdown`](Broker::shutdown). Does
    /// nothing on the broker thread itself or when already joined.
    pub fn join(&self) {
        if self.on_broker_thread() {
            return;
        }
        let handle = self.inner.join.lock().take();
        if let Some(h) = handle {
            if h.join().is_err() {
                log::error!("{}: broker thread panicked", self.inner.name);
            }
        }
    }

    /// The broker thread's body (Mitogen `_broker_main`).
    fn broker_main(self, mut poll: Poll) {
        let _ = self.inner.thread.set(sys::thread::current_id());
        let mut events = Events::with_capacity(1024);
        while self.inner.alive.load(Ordering::Acquire) {
            let timeout = self.next_timeout();
            self.loop_once(&mut poll, &mut events, timeout);
        }
        self.broker_shutdown(&mut poll, &mut events);
    }

    /// Wait for events (at most `timeout`) and dispatch each.
    fn loop_once(&self, poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) {
        // mio rounds sub-millisecond timeouts up, so a due timer never turns into a spin.
        let polled = poll.poll(events, timeout);
        self.run_due_timers();
        if let Err(e) = polled {
            if e.kind() != std::io::ErrorKind::Interrupted {
                log::error!("{}: poll failed: {e}; shutting down", self.inner.name);
                self.inner.alive.store(false, Ordering::Release);
            }
            return;
        }
        for ev in events.iter() {
            let token = ev.token();
            if token == WAKER {
                self.run_deferred();
                continue;
            }
            let (id, receive) = (token.0 / 2, token.0 % 2 == 0);
            let stream = {
                let reg = self.inner.registered.lock();
                if receive { reg.readers.get(&id) } else { reg.writers.get(&id) }.cloned()
            };
            // A stream unregistered earlier in this batch has no entry: its event is stale.
            if let Some(s) = stream {
                if receive {
                    guarded(format_args!("on_receive"), || s.on_receive(self));
                } else {
                    guarded(format_args!("on_transmit"), || s.on_transmit(self));
                }
            }
        }
        // What the callbacks queued for later (defer_queued) runs before the next poll.
        if !self.inner.deferred.lock().queue.is_empty() {
            self.run_deferred();
        }
    }

    fn run_deferred(&self) {
        let jobs = std::mem::take(&mut self.inner.deferred.lock().queue);
        for job in jobs {
            guarded(format_args!("deferred call"), job);
        }
    }

    fn all_streams(&self) -> Vec<Arc<dyn Source>> {
        let reg = self.inner.registered.lock();
        let mut v: Vec<Arc<dyn Source>> = reg.readers.values().cloned().collect();
        v.extend(reg.writers.iter().filter(|(id, _)| !reg.readers.contains_key(id)).map(|(_, s)| s.clone()));
        v
    }

    /// Graceful shutdown, then forced disconnection, then the exit callbacks.
    fn broker_shutdown(&self, poll: &mut Poll, events: &mut Events) {
        self.run_deferred();
        for s in self.all_streams() {
            guarded(format_args!("on_shutdown"), || s.on_shutdown(self));
        }
        self.run_deferred();
        let deadline = Instant::now() + self.inner.shutdown_timeout;
        while self.keep_alive() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::error!(
                    "{}: streams still connected {:?} after shutdown began; forcing disconnection",
                    self.inner.name,
                    self.inner.shutdown_timeout
                );
                break;
            }
            let timeout = self.next_timeout().map_or(left, |t| t.min(left));
            self.loop_once(poll, events, Some(timeout));
        }
        self.force_disconnect();
        let leftover = {
            let mut d = self.inner.deferred.lock();
            d.exited = true;
            std::mem::take(&mut d.queue)
        };
        for job in leftover {
            guarded(format_args!("deferred call"), job);
        }
        self.force_disconnect();
        self.inner.registered.lock().timers.clear();
        let on_exit = std::mem::take(&mut self.inner.registered.lock().on_exit);
        for f in on_exit {
            guarded(format_args!("exit callback"), f);
        }
        log::debug!("{}: exited", self.inner.name);
        let last = self.inner.registered.lock().exit_action.take();
        if let Some(f) = last {
            f();
        }
    }

    fn force_disconnect(&self) {
        for s in self.all_streams() {
            log::debug!("{}: force disconnecting {}", self.inner.name, s.describe());
            guarded(format_args!("on_disconnect"), || s.on_disconnect(self));
        }
    }
}

/// Run `f`, logging instead of unwinding if it panics, so the broker thread lives on.
pub(crate) fn guarded<R>(what: std::fmt::Arguments<'_>, f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(p) => {
            log::error!("{what} panicked: {}", panic_message(&*p));
            None
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
