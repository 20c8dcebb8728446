//! [`Latch`]: a queue that many threads may wait on, woken by the self-pipe trick.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::Mutex;

use crate::error::{Error, LatchError, Result, TimeoutError};
use crate::sys;

/// The per-thread socket pair a thread sleeps on (the documented "self-pipe trick").
///
/// Created lazily the first time a thread sleeps on any latch, and tied to one latch only for
/// the duration of one wait. Both ends are close-on-exec and non-blocking.
struct WakeSocket {
    rsock: OwnedFd,
    wsock: Arc<OwnedFd>,
}

impl WakeSocket {
    fn new() -> WakeSocket {
        let (r, w) = sys::socketpair(true).expect("latch: cannot create wake-up socketpair");
        WakeSocket { rsock: r, wsock: Arc::new(w) }
    }
}

thread_local! {
    static WAKE_SOCKET: std::cell::RefCell<Option<Rc<WakeSocket>>> = const { std::cell::RefCell::new(None) };
}

fn thread_socket() -> Rc<WakeSocket> {
    // During thread-local destruction the slot may be gone; a private pair then does the job.
    WAKE_SOCKET
        .try_with(|s| s.borrow_mut().get_or_insert_with(|| Rc::new(WakeSocket::new())).clone())
        .unwrap_or_else(|_| Rc::new(WakeSocket::new()))
}

/// In a forked child, after the parent's descriptors were closed: forget (without closing) the
/// calling thread's wake-up socket, which the parent's thread still uses, so the next wait makes
/// a fresh one (Mitogen `Latch._on_fork`).
pub(crate) fn forget_thread_socket_after_fork() {
    if let Ok(Some(old)) = WAKE_SOCKET.try_with(|s| s.borrow_mut().take()) {
        std::mem::forget(old);
    }
}

static NEXT_WAITER: AtomicU64 = AtomicU64::new(1);

/// Why a sleeper was woken.
enum Wake<T> {
    Item(T),
    Closed,
}

struct State<T> {
    queue: VecDeque<T>,
    closed: bool,
    /// Sleepers not yet woken, oldest first, with the write end of their wake-up socket.
    sleeping: VecDeque<(u64, Arc<OwnedFd>)>,
    /// Sleepers that were woken, with what woke them; each owes one byte on its socket.
    woken: HashMap<u64, Wake<T>>,
    /// Called after every `put` (Mitogen `Latch.notify`), as a `Select` holding it asks.
    notify: Option<LatchNotify>,
}

/// A function called, outside the latch's lock, after every [`Latch::put`] (Mitogen
/// `Latch.notify`); a `Select` holding the latch sets one.
pub type LatchNotify = Arc<dyn Fn() + Send + Sync>;

/// A queue supporting mutation and waiting from many threads (Mitogen `mitogen.core.Latch`).
///
/// A [`put`](Latch::put) hands its object straight to the oldest sleeping thread, if any, and
/// wakes exactly that thread by writing one byte to the thread's private socket pair; otherwise
/// the object is queued. A timed [`get_timeout`](Latch::get_timeout) sleeps in `ppoll(2)` with
/// nanosecond resolution, so it returns on time without spinning. [`close`](Latch::close)
/// wakes every sleeper with [`LatchError`], and every later call fails with it too.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mitogen_core::Latch;
///
/// let latch = Arc::new(Latch::new());
/// let l2 = latch.clone();
/// let t = std::thread::spawn(move || l2.get_timeout(Duration::from_secs(10)));
/// latch.put(42).unwrap();
/// assert_eq!(t.join().unwrap().unwrap(), 42);
/// assert!(latch.try_get().unwrap_err().is_timeout());
/// ```
pub struct Latch<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Latch<T> {
    fn default() -> Self {
        Latch::new()
    }
}

impl<T> std::fmt::Debug for Latch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Latch")
            .field("queued", &s.queue.len())
            .field("sleeping", &s.sleeping.len())
            .field("closed", &s.closed)
            .finish()
    }
}

fn closed_error() -> Error {
    Error::LatchError(LatchError::new("latch is closed"))
}

impl<T> Latch<T> {
    /// An empty, open latch.
    pub fn new() -> Latch<T> {
        Latch {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                sleeping: VecDeque::new(),
                woken: HashMap::new(),
                notify: None,
            }),
        }
    }

    /// Whether [`get`](Latch::get) would block now (Mitogen `empty()`); same as `len() == 0`.
    ///
    /// As with any queue shared by threads, the answer may be stale by the time it is used.
    pub fn empty(&self) -> bool {
        self.state.lock().queue.is_empty()
    }

    /// Same as [`empty`](Latch::empty).
    pub fn is_empty(&self) -> bool {
        self.empty()
    }

    /// How many objects are queued (Mitogen `size()`); as stale as [`empty`](Latch::empty).
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// How many threads are asleep in a `get` on this latch and not yet woken.
    pub fn sleeping(&self) -> usize {
        self.state.lock().sleeping.len()
    }

    /// Whether [`close`](Latch::close) was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Enqueue `obj`, waking the oldest sleeping thread if there is one.
    ///
    /// # Errors
    /// [`LatchError`] if the latch is closed; `obj` is dropped.
    pub fn put(&self, obj: T) -> Result<()> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(closed_error());
        }
        let notify = s.notify.clone();
        match s.sleeping.pop_front() {
            Some((id, wsock)) => {
                s.woken.insert(id, Wake::Item(obj));
                // Wake only after unlocking: the sleeper's first act is to take this lock, and
                // on a busy CPU it may run the instant the byte lands.
                drop(s);
                wake(&wsock);
            }
            None => {
                s.queue.push_back(obj);
                drop(s);
            }
        }
        if let Some(n) = notify {
            n();
        }
        Ok(())
    }

    /// Set or clear the function called after every [`put`](Latch::put) (Mitogen
    /// `Latch.notify`).
    pub fn set_notify(&self, notify: Option<LatchNotify>) {
        self.state.lock().notify = notify;
    }

    /// Whether a notify function is set (the latch belongs to a `Select`).
    pub fn has_notify(&self) -> bool {
        self.state.lock().notify.is_some()
    }

    /// Mark the latch closed and wake every sleeping thread with [`LatchError`].
    ///
    /// Objects still queued are dropped. Closing twice is harmless.
    pub fn close(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        s.queue.clear();
        while let Some((id, wsock)) = s.sleeping.pop_front() {
            s.woken.insert(id, Wake::Closed);
            wake(&wsock);
        }
    }

    /// Dequeue the next object, sleeping until one arrives.
    ///
    /// # Errors
    /// [`LatchError`] if the latch is or becomes closed.
    pub fn get(&self) -> Result<T> {
        self.get_inner(None, true)
    }

    /// Dequeue the next object without sleeping (Mitogen `get(block=False)`).
    ///
    /// # Errors
    /// [`TimeoutError`] if the latch is empty; [`LatchError`] if it is closed.
    pub fn try_get(&self) -> Result<T> {
        self.get_inner(None, false)
    }

    /// Dequeue the next object, sleeping at most `timeout` (Mitogen `get(timeout=...)`).
    ///
    /// # Errors
    /// [`TimeoutError`] when `timeout` passes; [`LatchError`] if the latch is or becomes closed.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_inner(Instant::now().checked_add(timeout), true)
    }

    /// Dequeue the next object, sleeping until `deadline` at the latest.
    ///
    /// # Errors
    /// As [`get_timeout`](Latch::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<T> {
        self.get_inner(Some(deadline), true)
    }

    /// The one implementation of every `get` flavour: `deadline` computed once by the caller.
    fn get_inner(&self, deadline: Option<Instant>, block: bool) -> Result<T> {
        let sock = {
            let mut s = self.state.lock();
            if s.closed {
                return Err(closed_error());
            }
            if let Some(obj) = s.queue.pop_front() {
                return Ok(obj);
            }
            if !block {
                return Err(Error::TimeoutError(TimeoutError::new("latch is empty")));
            }
            let sock = thread_socket();
            let id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
            s.sleeping.push_back((id, sock.wsock.clone()));
            (sock, id)
        };
        self.sleep(&sock.0, sock.1, deadline)
    }

    /// Sleep on this thread's socket until woken or `deadline`; loops on spurious wake-ups.
    fn sleep(&self, sock: &WakeSocket, id: u64, deadline: Option<Instant>) -> Result<T> {
        loop {
            let readable = match sys::wait_readable(sock.rsock.as_fd(), deadline) {
                Ok(r) => r,
                Err(e) => {
                    self.abandon(id);
                    return Err(Error::general(format!("latch: ppoll failed: {e}")));
                }
            };
            let mut s = self.state.lock();
            if let Some(wake) = s.woken.remove(&id) {
                // The waker writes its byte after recording the wake; if it has not landed yet
                // it is drained by a later wait on this thread, which treats it as spurious.
                drain(sock);
                return match wake {
                    Wake::Item(obj) => Ok(obj),
                    Wake::Closed => Err(closed_error()),
                };
            }
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if expired {
                s.sleeping.retain(|(i, _)| *i != id);
                return Err(Error::TimeoutError(TimeoutError::new("nothing arrived before the deadline")));
            }
            // A byte without a wake is a late byte from an earlier wait on this thread: drop it.
            if readable {
                drain(sock);
            }
        }
    }

    fn abandon(&self, id: u64) {
        let mut s = self.state.lock();
        s.sleeping.retain(|(i, _)| *i != id);
        s.woken.remove(&id);
    }
}

fn wake(wsock: &OwnedFd) {
    // A full socket buffer is impossible (one byte per wait), and a broken one means the sleeping
    // thread is gone; neither can be acted on here.
    let _ = sys::write(wsock.as_fd(), b"\x7f");
}

fn drain(sock: &WakeSocket) {
    let mut buf = [0u8; 16];
    let _ = sys::read(sock.rsock.as_fd(), &mut buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_get_is_fifo() {
        let l = Latch::new();
        for i in 0..5 {
            l.put(i).unwrap();
        }
        assert!(!l.empty());
        let got: Vec<i32> = (0..5).map(|_| l.try_get().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(l.empty());
    }

    #[test]
    fn try_get_on_empty_is_timeout() {
        let l: Latch<u8> = Latch::new();
        assert!(l.try_get().unwrap_err().is_timeout());
    }

    #[test]
    fn timed_get_returns_on_time() {
        let l: Latch<u8> = Latch::new();
        let t0 = Instant::now();
        let err = l.get_timeout(Duration::from_millis(50)).unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // The sleeper removed itself: a later put is queued, not handed to a ghost.
        l.put(1).unwrap();
        assert_eq!(l.try_get().unwrap(), 1);
    }

    #[test]
    fn closed_latch_refuses_everything() {
        let l = Latch::new();
        l.put(1).unwrap();
        l.close();
        assert!(l.is_closed());
        assert!(l.put(2).unwrap_err().is_latch());
        assert!(l.get().unwrap_err().is_latch());
        assert!(l.try_get().unwrap_err().is_latch());
    }

    #[test]
    fn wake_socket_is_cloexec_and_nonblocking() {
        let s = thread_socket();
        for fd in [s.rsock.as_fd(), s.wsock.as_fd()] {
            assert!(sys::is_cloexec(fd).unwrap());
            assert!(sys::is_nonblocking(fd).unwrap());
        }
    }
}
