//! This process's place in the context tree (Mitogen `mitogen.is_master`, `mitogen.context_id`,
//! `mitogen.parent_id`, `mitogen.parent_ids`).
//!
//! A master is context 0 with no parents. A child learns its identity from its parent while it
//! bootstraps, before any user code runs, and records it here with [`set_identity`]. Routers
//! created without an explicit [`Identity`] take this one.

use crate::sync::RwLock;

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

static IDENTITY: RwLock<Identity> = RwLock::new(Identity { context_id: 0, parent_ids: Vec::new() });

/// Record this process's identity; called once by the child bootstrap.
pub fn set_identity(identity: Identity) {
    *IDENTITY.write() = identity;
}

/// This process's identity.
pub fn identity() -> Identity {
    IDENTITY.read().clone()
}

/// Whether this process is the master (Mitogen `mitogen.is_master`).
pub fn is_master() -> bool {
    IDENTITY.read().is_master()
}

/// This process's context id (Mitogen `mitogen.context_id`).
pub fn context_id() -> u32 {
    IDENTITY.read().context_id
}

/// This process's parent's id, `None` in the master (Mitogen `mitogen.parent_id`).
pub fn parent_id() -> Option<u32> {
    IDENTITY.read().parent_id()
}

/// Ids of every parent, nearest first (Mitogen `mitogen.parent_ids`).
pub fn parent_ids() -> Vec<u32> {
    IDENTITY.read().parent_ids.clone()
}
