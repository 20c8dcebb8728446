//! Introspection (Mitogen's `Router.get_stats()`, `get_router_info()`, `get_stream_info()`):
//! what a router is connected to, its routes, and what crossed each stream. [`router_info`] is
//! a remote function, so any context of a tree can be asked.

use serde::{Deserialize, Serialize};

use mitogen_core::{ExternalContext, Router, Stream, StreamStats};

/// One stream of a router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Its name (`local.1234`, `ssh.host:2222`, ...).
    pub name: String,
    /// The context at its other end, once known.
    pub remote_id: Option<u32>,
    /// What crossed it.
    pub stats: StreamStats,
    /// Bytes queued and not yet written.
    pub pending_bytes: u64,
}

impl StreamInfo {
    fn of(stream: &Stream) -> StreamInfo {
        StreamInfo {
            name: stream.name(),
            remote_id: stream.remote_id(),
            stats: stream.stats(),
            pending_bytes: stream.pending_bytes() as u64,
        }
    }
}

/// A router's view of the tree (Mitogen `get_router_info` with `get_stream_info` of each
/// stream), plus who is answering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterInfo {
    /// The context's id (0: the master).
    pub context_id: u32,
    /// Its name (`master` for the master).
    pub name: String,
    /// Its ancestors, nearest first.
    pub parent_ids: Vec<u32>,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// The library's version there.
    pub version: String,
    /// Every stream a route goes through: the directly connected contexts.
    pub streams: Vec<StreamInfo>,
    /// Every route: a context id and the name of the stream leading to it.
    pub routes: Vec<(u32, String)>,
}

impl RouterInfo {
    /// The information of `router`, in this process.
    pub fn of(router: &Router) -> RouterInfo {
        let name = ExternalContext::current()
            .filter(|ec| ec.config().context_id == router.context_id())
            .map_or_else(|| "master".to_owned(), |ec| ec.config().name.clone());
        RouterInfo {
            context_id: router.context_id(),
            name,
            parent_ids: router.identity().parent_ids.clone(),
            hostname: mitogen_core::sys::hostname(),
            pid: std::process::id(),
            version: mitogen_core::VERSION.to_owned(),
            streams: router.direct_streams().iter().map(StreamInfo::of).collect(),
            routes: router.routes().into_iter().map(|(id, s)| (id, s.name())).collect(),
        }
    }
}
mitogen_core::returns!(RouterInfo);

/// Runs in any context: its router's [`RouterInfo`]. Call it as `ctx.call(router_info, ())`.
///
/// # Panics
/// Never in a child context (the only place a remote function runs).
pub fn router_info() -> RouterInfo {
    let ec = ExternalContext::current().expect("router_info runs in a child context");
    RouterInfo::of(ec.router())
}
mitogen_core::remote!(router_info);
