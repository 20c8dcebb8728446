//! Trees of contexts: the route monitor (`ADD_ROUTE` / `DEL_ROUTE`, `DETACHING`) and context
//! ids for children that become parents (`ALLOCATE_ID`). Below every method: a new context's
//! route is announced before it can speak.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use mitogen_core::{
    HandlerOptions, Message, Policy, Result, Router, Stream, ADD_ROUTE, ALLOCATE_ID, DEL_ROUTE, DETACHING,
};

/// How many context ids the master hands a child per `ALLOCATE_ID` request.
pub const ID_BLOCK: u32 = 1000;

/// Policy: the message came straight from the context at the other end of the stream it
/// arrived on, not relayed from further away (Mitogen `is_immediate_child`).
pub fn is_immediate_child(msg: &Message, stream: Option<&Stream>) -> bool {
    stream.is_some_and(|s| s.remote_id() == Some(msg.src_id))
}

fn route_message(handle: u32, dst_id: u32, router: &Router, target_id: u32) -> Message {
    Message::pickled(&target_id, handle).expect("a u32 always encodes").addressed(dst_id, router)
}

/// Send `DEL_ROUTE(target)` to the parent (when `up`), and down every direct stream, except
/// `from`, whose context ever sent a message to `target`, so callers there wake too.
fn propagate_del_route(router: &Router, target: u32, from: Option<&Stream>, up: bool) {
    let parent = router.identity().parent_id();
    if let (true, Some(p)) = (up, parent) {
        router.route(route_message(DEL_ROUTE, p, router, target));
    }
    for s in router.direct_streams() {
        let Some(peer) = s.remote_id() else { continue };
        if Some(&s) == from || Some(peer) == parent || !s.egress_ids().contains(&target) {
            continue;
        }
        let _ = s.send(route_message(DEL_ROUTE, peer, router, target));
    }
}

/// Make `router` a parent (Mitogen's `upgrade_router`): handle `ADD_ROUTE` and `DEL_ROUTE` from
/// directly connected contexts, relaying them up the tree, and announce lost subtrees when a
/// child's stream disconnects. Idempotent.
pub fn upgrade_router(router: &Router) {
    if router.has_handler(ADD_ROUTE) {
        return;
    }
    let policy: Policy = std::sync::Arc::new(is_immediate_child);
    let r = router.clone();
    let add = move |msg: Message| {
        if msg.is_dead() {
            return;
        }
        let Ok((target, name)) = msg.unpickle::<(u32, String)>() else {
            return log::error!("{r:?}: bad ADD_ROUTE from {}", msg.src_id);
        };
        log::debug!("{r:?}: route to {target} ({name}) via {}", msg.src_id);
        r.context_by_id_named(target, Some(&name));
        if let Err(e) = r.add_route(target, msg.src_id) {
            return log::error!("{r:?}: {e}");
        }
        if let Some(p) = r.identity().parent_id() {
            r.route(Message::pickled(&(target, name), ADD_ROUTE).expect("encodes").addressed(p, &r));
        }
    };
    let options = HandlerOptions { handle: Some(ADD_ROUTE), policy: Some(policy.clone()), ..Default::default() };
    if router.add_handler(add, options).is_err() {
        return; // another thread won the race
    }
    let r = router.clone();
    let del = move |msg: Message| {
        if msg.is_dead() {
            return;
        }
        let Ok(target) = msg.unpickle::<u32>() else {
            return log::error!("{r:?}: bad DEL_ROUTE from {}", msg.src_id);
        };
        log::debug!("{r:?}: route to {target} lost (told by {})", msg.src_id);
        r.del_route(target);
        let from_parent = r.identity().parent_id() == Some(msg.src_id);
        let from = r.stream_by_id(msg.src_id);
        propagate_del_route(&r, target, from.as_ref(), !from_parent);
    };
    // Replaces the stub every router starts with, which only wakes local callers.
    let options =
        HandlerOptions { handle: Some(DEL_ROUTE), policy: Some(policy.clone()), overwrite: true, ..Default::default() };
    let _ = router.add_handler(del, options);
    let r = router.clone();
    let detaching = move |msg: Message| {
        if msg.is_dead() {
            return;
        }
        if let Some(s) = r.stream_by_id(msg.src_id).filter(|s| s.remote_id() == Some(msg.src_id)) {
            log::debug!("{r:?}: context {} is detaching", msg.src_id);
            s.set_detached();
            // The child waits for this answer before it disconnects (Mitogen `send_await`).
            let _ = msg.reply(&(), Some(&r));
        }
    };
    let options = HandlerOptions { handle: Some(DETACHING), policy: Some(policy), ..Default::default() };
    let _ = router.add_handler(detaching, options);
    router.on_stream_disconnect_hook(|router, stream, lost| {
        if stream.remote_id().is_some() && stream.remote_id() == router.identity().parent_id() {
            return;
        }
        for &target in lost {
            propagate_del_route(router, target, Some(stream), true);
        }
    });
}

/// Tell the parent (and through it every ancestor) that `context_id` is reached through this
/// context. Sent before the new child's stream is read, so it arrives before anything the child
/// sends.
pub(crate) fn announce_route(router: &Router, context_id: u32, name: &str) {
    if let Some(p) = router.identity().parent_id() {
        router.route(Message::pickled(&(context_id, name), ADD_ROUTE).expect("encodes").addressed(p, router));
    }
}

/// In the master: answer `ALLOCATE_ID` with a block `(first, end)` of fresh ids from `next`.
pub fn serve_allocate_id(router: &Router, next: std::sync::Arc<std::sync::atomic::AtomicU32>) -> Result<()> {
    let r = router.clone();
    let serve = move |msg: Message| {
        if msg.is_dead() {
            return;
        }
        let first = next.fetch_add(ID_BLOCK, std::sync::atomic::Ordering::Relaxed);
        log::debug!("{r:?}: ids {first}..{} for context {}", first + ID_BLOCK, msg.src_id);
        let _ = msg.reply(&(first, first + ID_BLOCK), Some(&r));
    };
    router.add_handler(serve, HandlerOptions { handle: Some(ALLOCATE_ID), ..Default::default() }).map(|_| ())
}

/// The block of context ids this process hands its own children: `next << 32 | end`, and the
/// pid that asked for it, so a forked copy (which inherits this memory) asks for its own block
/// instead of handing out the same ids. Atomics, not a lock: a thread may be waiting for the
/// master's answer at the instant another forks, and a forked child must never find a lock
/// held by a thread it does not have.
static ID_BLOCK_RANGE: AtomicU64 = AtomicU64::new(0);
static ID_BLOCK_PID: AtomicU32 = AtomicU32::new(0);

/// A child's next context id for a context of its own, from blocks the master hands out.
///
/// # Errors
/// What asking the master fails with.
pub fn allocate_child_id(router: &Router) -> Result<u32> {
    let pid = std::process::id();
    loop {
        let range = ID_BLOCK_RANGE.load(Ordering::Acquire);
        let (next, end) = ((range >> 32) as u32, range as u32);
        if ID_BLOCK_PID.load(Ordering::Acquire) != pid || next >= end {
            break;
        }
        let taken = u64::from(next + 1) << 32 | u64::from(end);
        if ID_BLOCK_RANGE.compare_exchange(range, taken, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return Ok(next);
        }
    }
    // No usable block: ask for one (threads racing here each get their own; the loser's
    // remainder is simply not used).
    let master = router.context_by_id(0);
    let (first, end): (u32, u32) =
        master.send_await(Message::raw(ALLOCATE_ID, Vec::new()), Some(Duration::from_secs(30)))?;
    ID_BLOCK_RANGE.store(u64::from(first + 1) << 32 | u64::from(end), Ordering::Release);
    ID_BLOCK_PID.store(pid, Ordering::Release);
    Ok(first)
}
