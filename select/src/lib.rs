//! Waiting on many receivers at once (Python's `mitogen.select`).
//!
//! A [`Select`] gathers [`Receiver`]s, [`Channel`]s, [`Latch`]es of messages and other
//! `Select`s and returns the first message posted to any of them. With `oneshot` (the default) each receiver is removed once it
//! yields a message, so iterating a `Select` over a batch of `call_async` receivers ends when all
//! have answered, in the order the answers arrived.
//!
//! ```
//! use std::time::Duration;
//! use mitogen_core::{Broker, Receiver, Router};
//! use mitogen_select::Select;
//!
//! let broker = Broker::new()?;
//! let router = Router::new(&broker);
//! let recvs: Vec<Receiver> = (0..3).map(|_| Receiver::new(&router)).collect::<Result<_, _>>()?;
//! for (i, r) in recvs.iter().enumerate().rev() {
//!     r.to_sender().send(&(i as u32))?;
//! }
//! let mut got: Vec<u32> = Select::all(recvs.clone())?;
//! got.sort();
//! assert_eq!(got, vec![0, 1, 2]);
//! broker.shutdown();
//! broker.join();
//! # Ok::<(), mitogen_core::Error>(())
//! ```
#![deny(missing_docs)]

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

// (The workspace's lock: no poisoning, so a panicking notify cannot wedge the select, and no
// process-global tables a `fork` could leave locked.)
use mitogen_core::{Channel, Error, Latch, Message, Mutex, Receiver, Result};
use serde::de::DeserializeOwned;

type SelectNotify = Arc<dyn Fn() + Send + Sync>;

/// Something a [`Select`] can wait on: a receiver (or channel), a latch, or another select.
#[derive(Clone, Debug)]
pub enum Selectable {
    /// A receiver; a [`Channel`] is added as its receiving half.
    Receiver(Receiver),
    /// A latch of messages: [`Select::get`] returns what was [`put`](Latch::put) in it
    /// (Mitogen's Select accepts any `Latch`; here its items are [`Message`]s, such as
    /// `Message::pickled(&value, 0)`, so a select returns one type).
    Latch(Arc<Latch<Message>>),
    /// A nested select.
    Select(Select),
}

impl Selectable {
    fn same(&self, other: &Selectable) -> bool {
        match (self, other) {
            (Selectable::Receiver(a), Selectable::Receiver(b)) => a == b,
            (Selectable::Latch(a), Selectable::Latch(b)) => Arc::ptr_eq(a, b),
            (Selectable::Select(a), Selectable::Select(b)) => Arc::ptr_eq(&a.inner, &b.inner),
            _ => false,
        }
    }

    fn len(&self) -> usize {
        match self {
            Selectable::Receiver(r) => r.len(),
            Selectable::Latch(l) => l.len(),
            Selectable::Select(s) => s.inner.latch.len(),
        }
    }
}

impl From<Receiver> for Selectable {
    fn from(r: Receiver) -> Selectable {
        Selectable::Receiver(r)
    }
}

impl From<&Receiver> for Selectable {
    fn from(r: &Receiver) -> Selectable {
        Selectable::Receiver(r.clone())
    }
}

impl From<&Channel> for Selectable {
    fn from(c: &Channel) -> Selectable {
        Selectable::Receiver(c.receiver().clone())
    }
}

impl From<Arc<Latch<Message>>> for Selectable {
    fn from(l: Arc<Latch<Message>>) -> Selectable {
        Selectable::Latch(l)
    }
}

impl From<&Arc<Latch<Message>>> for Selectable {
    fn from(l: &Arc<Latch<Message>>) -> Selectable {
        Selectable::Latch(l.clone())
    }
}

impl From<Select> for Selectable {
    fn from(s: Select) -> Selectable {
        Selectable::Select(s)
    }
}

impl From<&Select> for Selectable {
    fn from(s: &Select) -> Selectable {
        Selectable::Select(s.clone())
    }
}

struct Inner {
    oneshot: bool,
    latch: Latch<Selectable>,
    members: Mutex<Vec<Selectable>>,
    /// Set while this select is nested in another: tells the parent it has something.
    notify: Mutex<Option<SelectNotify>>,
}

impl Inner {
    fn put(&self, member: Selectable) {
        if self.latch.put(member).is_ok() {
            let n = self.notify.lock().clone();
            if let Some(n) = n {
                n();
            }
        }
    }
}

/// Waits on many receivers and nested selects at once (Mitogen `mitogen.select.Select`).
///
/// Cheap to clone; clones are the same select. [`close`](Select::close) (or dropping the last
/// clone) detaches it from every member.
#[derive(Clone)]
pub struct Select {
    inner: Arc<Inner>,
}

impl fmt::Debug for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Select({} members, oneshot={})", self.inner.members.lock().len(), self.inner.oneshot)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for m in self.members.get_mut().drain(..) {
            detach(&m);
        }
    }
}

fn detach(member: &Selectable) {
    match member {
        Selectable::Receiver(r) => r.set_notify(None),
        Selectable::Latch(l) => l.set_notify(None),
        Selectable::Select(s) => *s.inner.notify.lock() = None,
    }
}

impl Select {
    /// A select over `members` (Mitogen `Select(receivers, oneshot)`).
    ///
    /// # Errors
    /// As [`add`](Select::add).
    pub fn new<I, S>(members: I, oneshot: bool) -> Result<Select>
    where
        I: IntoIterator<Item = S>,
        S: Into<Selectable>,
    {
        let select = Select {
            inner: Arc::new(Inner {
                oneshot,
                latch: Latch::new(),
                members: Mutex::new(Vec::new()),
                notify: Mutex::new(None),
            }),
        };
        for m in members {
            select.add(m)?;
        }
        Ok(select)
    }

    /// An empty select (`oneshot` as given) to [`add`](Select::add) to later.
    pub fn empty_select(oneshot: bool) -> Select {
        Select::new(Vec::<Selectable>::new(), oneshot).expect("an empty select has nothing to refuse")
    }

    /// Whether members are removed once they yield a message.
    pub fn oneshot(&self) -> bool {
        self.inner.oneshot
    }

    /// Wait for one message from each receiver and decode each as `T`, in the order they arrive
    /// (Mitogen `Select.all`).
    ///
    /// # Errors
    /// The first error any receiver raises: [`ChannelError`](mitogen_core::ChannelError) for a
    /// dead one, [`CallError`](mitogen_core::CallError) for a failed call.
    pub fn all<I, S, T>(members: I) -> Result<Vec<T>>
    where
        I: IntoIterator<Item = S>,
        S: Into<Selectable>,
        T: DeserializeOwned,
    {
        let select = Select::new(members, true)?;
        let mut out = Vec::new();
        while select.has_receivers() {
            out.push(select.get()?.unpickle()?);
        }
        Ok(out)
    }

    /// Add a receiver, channel or select (Mitogen `add`). Messages already queued in it are
    /// announced at once.
    ///
    /// # Errors
    /// [`GeneralError`](mitogen_core::GeneralError) if the member already belongs to a select,
    /// or adding a select would make a cycle (a select inside itself, at any depth).
    pub fn add(&self, member: impl Into<Selectable>) -> Result<()> {
        let member = member.into();
        let weak = Arc::downgrade(&self.inner);
        match &member {
            Selectable::Receiver(r) => {
                if r.notify().is_some() {
                    return Err(Error::general(format!("{r:?} already belongs to a Select")));
                }
                r.set_notify(Some(Arc::new(move |r: &Receiver| put(&weak, Selectable::Receiver(r.clone())))));
            }
            Selectable::Latch(l) => {
                if l.has_notify() {
                    return Err(Error::general(format!("{l:?} already belongs to a Select")));
                }
                let latch = Arc::downgrade(l);
                l.set_notify(Some(Arc::new(move || {
                    if let Some(l) = latch.upgrade() {
                        put(&weak, Selectable::Latch(l));
                    }
                })));
            }
            Selectable::Select(s) => {
                if s.contains(self) {
                    return Err(Error::general("cannot add a Select to itself or to a Select it contains"));
                }
                let mut n = s.inner.notify.lock();
                if n.is_some() {
                    return Err(Error::general(format!("{s:?} already belongs to a Select")));
                }
                let child = s.clone();
                let child_weak = Arc::downgrade(&child.inner);
                *n = Some(Arc::new(move || {
                    if let Some(c) = child_weak.upgrade() {
                        put(&weak, Selectable::Select(Select { inner: c }));
                    }
                }));
            }
        }
        self.inner.members.lock().push(member.clone());
        // Notification only covers what arrives from now on: post what is already queued.
        for _ in 0..member.len() {
            self.inner.put(member.clone());
        }
        Ok(())
    }

    fn is_member(&self, member: &Selectable) -> bool {
        self.inner.members.lock().iter().any(|m| m.same(member))
    }

    /// Whether `other` is this select or nested in it at any depth.
    fn contains(&self, other: &Select) -> bool {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return true;
        }
        let members = self.inner.members.lock().clone();
        members.iter().any(|m| matches!(m, Selectable::Select(s) if s.contains(other)))
    }

    /// Remove a member (Mitogen `remove`). Unlike Mitogen, a message it announced before its
    /// removal is not returned by a later [`get`](Select::get): it stays in the receiver.
    ///
    /// # Errors
    /// [`GeneralError`](mitogen_core::GeneralError) if it is not a member.
    pub fn remove(&self, member: impl Into<Selectable>) -> Result<()> {
        let member = member.into();
        let mut members = self.inner.members.lock();
        let idx = members
            .iter()
            .position(|m| m.same(&member))
            .ok_or_else(|| Error::general(format!("{member:?} is not a member of this Select")))?;
        detach(&members.remove(idx));
        Ok(())
    }

    /// Detach from every member and wake threads waiting in [`get`](Select::get) with
    /// [`LatchError`](mitogen_core::LatchError) (Mitogen `close`).
    pub fn close(&self) {
        for m in std::mem::take(&mut *self.inner.members.lock()) {
            detach(&m);
        }
        self.inner.latch.close();
    }

    /// Whether any member remains (Mitogen `__bool__`).
    pub fn has_receivers(&self) -> bool {
        !self.inner.members.lock().is_empty()
    }

    /// Whether [`get`](Select::get) would block now (Mitogen `empty()`).
    pub fn empty(&self) -> bool {
        self.inner.latch.empty()
    }

    /// Wait for the next message from any member; its [`receiver`](Message::receiver) is set to
    /// the receiver it came from (Mitogen `get()`).
    ///
    /// # Errors
    /// [`GeneralError`](mitogen_core::GeneralError) if the select has no members;
    /// [`LatchError`](mitogen_core::LatchError) if it is closed;
    /// [`ChannelError`](mitogen_core::ChannelError) if the message is dead.
    pub fn get(&self) -> Result<Message> {
        self.get_inner(None, true)
    }

    /// The next message if one is ready (Mitogen `get(block=False)`).
    ///
    /// # Errors
    /// [`TimeoutError`](mitogen_core::TimeoutError) if none is; as [`get`](Select::get).
    pub fn try_get(&self) -> Result<Message> {
        self.get_inner(None, false)
    }

    /// Wait at most `timeout` for the next message (Mitogen `get(timeout=...)`).
    ///
    /// # Errors
    /// [`TimeoutError`](mitogen_core::TimeoutError) when it passes; as [`get`](Select::get).
    pub fn get_timeout(&self, timeout: Duration) -> Result<Message> {
        self.get_inner(Instant::now().checked_add(timeout), true)
    }

    /// Wait until `deadline` at the latest for the next message.
    ///
    /// # Errors
    /// As [`get_timeout`](Select::get_timeout).
    pub fn get_deadline(&self, deadline: Instant) -> Result<Message> {
        self.get_inner(Some(deadline), true)
    }

    fn get_inner(&self, deadline: Option<Instant>, block: bool) -> Result<Message> {
        loop {
            if self.inner.latch.is_closed() {
                return Err(Error::LatchError(mitogen_core::LatchError::new("Select is closed")));
            }
            if !self.has_receivers() && self.inner.latch.empty() {
                return Err(Error::general("cannot get(): Select instance is empty"));
            }
            let member = match (block, deadline) {
                (false, _) => self.inner.latch.try_get()?,
                (true, None) => self.inner.latch.get()?,
                (true, Some(d)) => self.inner.latch.get_deadline(d)?,
            };
            if !self.is_member(&member) {
                // Announced before it was removed (by oneshot or remove()): its messages stay
                // in it for whoever reads it directly.
                continue;
            }
            let got = match &member {
                Selectable::Receiver(r) => r.try_get(),
                Selectable::Latch(l) => l.try_get(),
                Selectable::Select(s) => s.try_get(),
            };
            match got {
                // Another thread drained the member since it announced itself: wait again.
                Err(e) if e.is_timeout() => continue,
                other => {
                    if self.inner.oneshot {
                        let _ = self.remove(member.clone());
                    }
                    let mut msg = other?;
                    if let Selectable::Receiver(r) = member {
                        msg.receiver = Some(r);
                    }
                    return Ok(msg);
                }
            }
        }
    }

    /// Iterate over messages until no members remain (Mitogen `__iter__`); an error is yielded
    /// once, and iteration stops after a closed select's [`LatchError`](mitogen_core::LatchError).
    pub fn iter(&self) -> Iter<'_> {
        Iter { select: self, done: false }
    }
}

fn put(weak: &Weak<Inner>, member: Selectable) {
    if let Some(inner) = weak.upgrade() {
        inner.put(member);
    }
}

/// Iterator over a [`Select`]'s messages; see [`Select::iter`].
#[derive(Debug)]
pub struct Iter<'a> {
    select: &'a Select,
    done: bool,
}

impl Iterator for Iter<'_> {
    type Item = Result<Message>;

    fn next(&mut self) -> Option<Result<Message>> {
        if self.done || !self.select.has_receivers() {
            return None;
        }
        let got = self.select.get();
        if matches!(&got, Err(e) if e.is_latch() || matches!(e, Error::GeneralError(_))) {
            self.done = true;
        }
        Some(got)
    }
}

impl<'a> IntoIterator for &'a Select {
    type Item = Result<Message>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}
