//! What the connections of this process did: contexts connected, bootstraps, executables
//! shipped and their bytes ([`bootstrap_stats`], in `Router::get_stats`).

use std::sync::atomic::{AtomicU64, Ordering};

/// What the bootstraps of this process did, since it started (Mitogen has no counterpart; its
/// importer statistics play the same part).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootstrapStats {
    /// Contexts this process connected, by any method (local, fork, command, ssh, ...).
    pub connections: u64,
    /// Bootstraps (the methods that run stage 1) that reached the handshake.
    pub connects: u64,
    /// Of those, how many ran a copy already cached on the target.
    pub cached: u64,
    /// How many shipped a copy.
    pub shipped: u64,
    /// Executable bytes sent (compressed when the target had `gzip`).
    pub bytes_sent: u64,
}

static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
static CONNECTS: AtomicU64 = AtomicU64::new(0);
static CACHED: AtomicU64 = AtomicU64::new(0);
static SHIPPED_BYTES: AtomicU64 = AtomicU64::new(0);

/// The bootstraps this process ran (through any router), for benchmarks and tests: whether a
/// connect shipped the executable, and how many bytes.
pub fn bootstrap_stats() -> BootstrapStats {
    let (connects, cached) = (CONNECTS.load(Ordering::Relaxed), CACHED.load(Ordering::Relaxed));
    BootstrapStats {
        connections: CONNECTIONS.load(Ordering::Relaxed),
        connects,
        cached,
        shipped: connects - cached,
        bytes_sent: SHIPPED_BYTES.load(Ordering::Relaxed),
    }
}

/// Count a context that answered its handshake.
pub(crate) fn count_connection() {
    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
}

/// Count a bootstrap that reached the handshake.
pub(crate) fn count(cached: bool, bytes_sent: usize) {
    CACHED.fetch_add(u64::from(cached), Ordering::Relaxed);
    SHIPPED_BYTES.fetch_add(bytes_sent as u64, Ordering::Relaxed);
    CONNECTS.fetch_add(1, Ordering::Relaxed);
}
