//! This process's place in the context tree (Mitogen `mitogen.is_master`, `mitogen.context_id`,
//! `mitogen.parent_id`, `mitogen.parent_ids`).
//!
//! A master is context 0 with no parents. A child learns its identity from its parent while it
//! bootstraps, before any user code runs, and records it here with [`set_identity`]. Routers
//! created without an explicit [`Identity`] take this one.

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// A context's identity: its id and the ids of its parents, nearest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// This context's id; `0` is the master.
    pub context_id: u32,
    /// Ids of this context's parents, nearest first; empty for the master.
    pub parent_ids: Vec<u32>,
}

impl Identity {
    /// The master's identity: context 0, no parents.
    pub fn master() -> Identity {
        Identity::default()
    }

    /// The nearest parent's id, if any (Mitogen `parent_id`).
    pub fn parent_id(&self) -> Option<u32> {
        self.parent_ids.first().copied()
    }

    /// Whether this is the master (Mitogen `is_master`).
    pub fn is_master(&self) -> bool {
        self.parent_ids.is_empty()
    }
}

/// This process's identity, published once by the child bootstrap (twice in a forked child,
/// and again when a context detaches).
///
/// Lock-free on purpose: every `Message` construction reads it, from any thread, and a forked
/// child must be able to replace it even if another thread of the parent was reading it at the
/// instant of the `fork` (a lock held then would stay held for ever in the child). A writer
/// leaks the identity it replaces, since a reader may still be cloning it; a process publishes
/// a handful in its life.
static IDENTITY: AtomicPtr<Identity> = AtomicPtr::new(std::ptr::null_mut());

fn current() -> Option<&'static Identity> {
    // SAFETY: a non-null pointer came from Box::leak in `set_identity` and is never freed.
    unsafe { IDENTITY.load(Ordering::Acquire).as_ref() }
}

/// Record this process's identity; called by the child bootstrap.
pub fn set_identity(identity: Identity) {
    IDENTITY.store(Box::leak(Box::new(identity)), Ordering::Release);
}

/// This process's identity.
pub fn identity() -> Identity {
    current().cloned().unwrap_or_default()
}

/// Whether this process is the master (Mitogen `mitogen.is_master`).
pub fn is_master() -> bool {
    current().map_or(true, Identity::is_master)
}

/// This process's context id (Mitogen `mitogen.context_id`).
pub fn context_id() -> u32 {
    current().map_or(0, |i| i.context_id)
}

/// This process's parent's id, `None` in the master (Mitogen `mitogen.parent_id`).
pub fn parent_id() -> Option<u32> {
    current().and_then(Identity::parent_id)
}

/// Ids of every parent, nearest first (Mitogen `mitogen.parent_ids`).
pub fn parent_ids() -> Vec<u32> {
    current().map(|i| i.parent_ids.clone()).unwrap_or_default()
}

/// Set in a process that was forked from another: it must not take std's backtrace lock.
static FORKED: AtomicBool = AtomicBool::new(false);

/// Mark this process a forked copy of another (`ForkGuard::in_child`).
pub(crate) fn set_forked() {
    FORKED.store(true, Ordering::Relaxed);
}

/// Whether this process is a forked copy of another (it skips backtraces in panics).
pub(crate) fn is_forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}
