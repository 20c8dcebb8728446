//! In-process context trees: routers on their own brokers joined by socketpairs.

use std::sync::Arc;

use mitogen::core::{socketpair, Broker, Identity, Latch, Router, Stream};
use mitogen_tests::WAIT;

/// Wait until `broker` has run everything deferred to it so far (its queue is FIFO).
pub(crate) fn sync(broker: &Broker) {
    let latch = Arc::new(Latch::new());
    let l = latch.clone();
    broker.defer(move || l.put(()).unwrap()).unwrap();
    latch.get_timeout(WAIT).unwrap();
}

/// A router with its own broker, shut down and joined on drop.
pub(crate) struct Node {
    pub(crate) router: Router,
}

impl Node {
    pub(crate) fn new(context_id: u32, parent_ids: Vec<u32>) -> Node {
        let broker = Broker::new().expect("start broker");
        Node { router: Router::with_identity(&broker, Identity { context_id, parent_ids }) }
    }

    pub(crate) fn broker(&self) -> &Broker {
        self.router.broker()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.broker().shutdown();
        self.broker().join();
    }
}

/// Join `parent` and `child` with a socketpair as parent and child contexts; returns the
/// parent's stream to the child and the child's stream to the parent.
pub(crate) fn connect(parent: &Router, child: &Router) -> (Stream, Stream) {
    let (p, c) = socketpair().expect("socketpair");
    let ps = Stream::message(parent, format!("{}->{}", parent.context_id(), child.context_id()), p).unwrap();
    let cs = Stream::message(child, format!("{}->{}", child.context_id(), parent.context_id()), c).unwrap();
    cs.set_privileged(true);
    parent.register(&parent.context_by_id(child.context_id()), &ps);
    child.register(&child.context_by_id(parent.context_id()), &cs);
    (ps, cs)
}

/// A master (context 0) with one child (context 1).
pub(crate) struct Pair {
    pub(crate) stream_to_child: Stream,
    pub(crate) stream_to_parent: Stream,
    // Field order is drop order: the child goes first.
    pub(crate) child: Node,
    pub(crate) master: Node,
}

impl Pair {
    pub(crate) fn new() -> Pair {
        let master = Node::new(0, vec![]);
        let child = Node::new(1, vec![0]);
        let (stream_to_child, stream_to_parent) = connect(&master.router, &child.router);
        Pair { stream_to_child, stream_to_parent, child, master }
    }
}
