//! Router: handlers, policies, dead replies, routes, source verification, unidirectional mode.

use std::sync::Arc;

use mitogen::core::{has_parent_authority, HandlerOptions, Latch, Message, Policy, Receiver};
use mitogen_tests::{run, WAIT};

use crate::fixtures::{connect, sync, Node, Pair};

/// Send `msg` from `from` to `dst_id` asking for a reply, and return the error the reply raises.
fn dead_reply_to(from: &mitogen::core::Router, dst_id: u32, mut msg: Message) -> String {
    let recv = Receiver::with_options(from, None, false, None).unwrap();
    msg.reply_to = recv.handle();
    from.context_by_id(dst_id).send(msg);
    let err = recv.get_timeout(WAIT).unwrap_err();
    assert!(err.is_channel(), "expected a dead reply, got {err}");
    err.to_string()
}

#[test]
fn registering_a_taken_handle_and_deleting_an_unknown_one_are_errors() {
    run(|| {
        let node = Node::new(0, vec![]);
        let h = node.router.add_handler(|_| (), HandlerOptions::default()).unwrap();
        let opts = HandlerOptions { handle: Some(h), ..Default::default() };
        let err = node.router.add_handler(|_| (), opts).unwrap_err();
        assert!(err.to_string().contains(&format!("handle {h} is already registered")), "{err}");
        node.router.del_handler(h).unwrap();
        let err = node.router.del_handler(h).unwrap_err();
        assert!(err.to_string().contains("is not registered"), "{err}");
        // Explicit handles may be chosen; new ones are allocated above the reserved range.
        let opts = HandlerOptions { handle: Some(4242), ..Default::default() };
        assert_eq!(node.router.add_handler(|_| (), opts).unwrap(), 4242);
        assert!(node.router.add_handler(|_| (), HandlerOptions::default()).unwrap() >= 1000);
    });
}

#[test]
fn invalid_handle_gets_a_dead_reply() {
    run(|| {
        let pair = Pair::new();
        let err = dead_reply_to(&pair.child.router, 0, Message::raw(4321, vec![]));
        assert!(err.contains("invalid handle 4321 in context 0"), "{err}");
    });
}

#[test]
fn no_route_gets_a_dead_reply() {
    run(|| {
        let pair = Pair::new();
        // The child forwards unknown destinations to its parent, which has no route either.
        let err = dead_reply_to(&pair.child.router, 77, Message::raw(1000, vec![]));
        assert!(err.contains("no route to context 77 from context 0"), "{err}");
        // In the master itself, an unknown destination fails at once.
        let err = dead_reply_to(&pair.master.router, 78, Message::raw(1000, vec![]));
        assert!(err.contains("no route to context 78"), "{err}");
    });
}

#[test]
fn too_large_message_gets_a_dead_reply() {
    run(|| {
        let pair = Pair::new();
        pair.child.router.set_max_message_size(100);
        let err = dead_reply_to(&pair.child.router, 0, Message::raw(1000, vec![0; 101]));
        assert!(err.contains("message of 101 bytes is too large (max_message_size is 100 bytes"), "{err}");
    });
}

#[test]
fn policy_refusal_gets_a_dead_reply_and_parent_authority_is_enforced() {
    run(|| {
        let pair = Pair::new();
        let got = Arc::new(Latch::new());
        // In the master, a handler that only takes messages with parent authority refuses the
        // child (a child has no authority over its parent).
        let g = got.clone();
        let opts = HandlerOptions { policy: Some(Arc::new(has_parent_authority) as Policy), ..Default::default() };
        let h = pair.master.router.add_handler(move |m| g.put(m.src_id).unwrap(), opts).unwrap();
        let err = dead_reply_to(&pair.child.router, 0, Message::raw(h, vec![]));
        assert!(err.contains(&format!("refused by policy of handle {h} in context 0")), "{err}");
        assert!(got.empty());
        // In the child, the same policy admits the parent.
        let g = got.clone();
        let opts = HandlerOptions { policy: Some(Arc::new(has_parent_authority) as Policy), ..Default::default() };
        let h = pair.child.router.add_handler(move |m| g.put(m.src_id).unwrap(), opts).unwrap();
        pair.master.router.context_by_id(1).send(Message::raw(h, vec![]));
        assert_eq!(got.get_timeout(WAIT).unwrap(), 0);
    });
}

#[test]
fn non_persistent_handler_is_removed_after_one_message() {
    run(|| {
        let node = Node::new(0, vec![]);
        let got = Arc::new(Latch::new());
        let g = got.clone();
        let opts = HandlerOptions { persist: false, ..Default::default() };
        let h = node.router.add_handler(move |m| g.put(m.data).unwrap(), opts).unwrap();
        node.router.myself().send(Message::raw(h, b"one".to_vec()));
        assert_eq!(got.get_timeout(WAIT).unwrap(), b"one");
        assert!(!node.router.has_handler(h));
        let err = dead_reply_to(&node.router, 0, Message::raw(h, b"two".to_vec()));
        assert!(err.contains("invalid handle"), "{err}");
    });
}

#[test]
fn respondent_disconnect_wakes_the_waiting_receiver() {
    run(|| {
        let pair = Pair::new();
        let child = pair.master.router.context_by_id(1);
        let recv = Receiver::with_options(&pair.master.router, None, true, Some(child)).unwrap();
        let r = recv.clone();
        let waiter = std::thread::spawn(move || r.get_timeout(WAIT));
        pair.child.broker().shutdown();
        let err = waiter.join().unwrap().unwrap_err();
        assert!(err.is_channel() && err.to_string().contains("lost connection to context [1]"), "{err}");
    });
}

#[test]
fn stream_by_id_falls_back_to_the_parent_and_routes_can_be_added_and_deleted() {
    run(|| {
        let pair = Pair::new();
        assert_eq!(pair.child.router.stream_by_id(99), Some(pair.stream_to_parent.clone()));
        assert_eq!(pair.master.router.stream_by_id(99), None);
        assert_eq!(pair.master.router.stream_by_id(1), Some(pair.stream_to_child.clone()));
        pair.master.router.add_route(5, 1).unwrap();
        assert_eq!(pair.master.router.stream_by_id(5), Some(pair.stream_to_child.clone()));
        let err = pair.master.router.add_route(6, 99).unwrap_err();
        assert!(err.to_string().contains("no stream reaches 99"), "{err}");
        let ctx5 = pair.master.router.context_by_id(5);
        let recv = Receiver::with_options(&pair.master.router, None, true, Some(ctx5)).unwrap();
        pair.master.router.del_route(5);
        assert_eq!(pair.master.router.stream_by_id(5), None);
        assert!(recv.get_timeout(WAIT).unwrap_err().is_channel());
    });
}

#[test]
fn spoofed_auth_id_from_a_child_is_dropped() {
    run(|| {
        let pair = Pair::new();
        let got = Arc::new(Latch::new());
        let g = got.clone();
        let h = pair.master.router.add_handler(move |m| g.put(m.data).unwrap(), HandlerOptions::default()).unwrap();
        // The child claims to act with the master's authority: dropped, with a logged error.
        let spoof =
            Message { dst_id: 0, src_id: 1, auth_id: 0, handle: h, data: b"spoof".to_vec(), ..Message::default() };
        pair.stream_to_parent.send(spoof).unwrap();
        let spoof_src =
            Message { dst_id: 0, src_id: 7, auth_id: 1, handle: h, data: b"src".to_vec(), ..Message::default() };
        pair.stream_to_parent.send(spoof_src).unwrap();
        let honest =
            Message { dst_id: 0, src_id: 1, auth_id: 1, handle: h, data: b"honest".to_vec(), ..Message::default() };
        pair.stream_to_parent.send(honest).unwrap();
        // Same stream, so in order: if the spoofs had been delivered they would come first.
        assert_eq!(got.get_timeout(WAIT).unwrap(), b"honest");
        sync(pair.master.broker());
        assert!(got.empty());
    });
}

#[test]
fn siblings_talk_through_the_parent_unless_it_is_unidirectional() {
    run(|| {
        let master = Node::new(0, vec![]);
        let b = Node::new(1, vec![0]);
        let c = Node::new(2, vec![0]);
        let _bs = connect(&master.router, &b.router);
        let _cs = connect(&master.router, &c.router);
        let recv = Receiver::new(&c.router).unwrap();
        b.router.context_by_id(2).send(Message::pickled("hi sibling", recv.handle()).unwrap());
        assert_eq!(recv.get_data_timeout::<String>(WAIT).unwrap(), "hi sibling");

        master.router.set_unidirectional(true);
        let err = dead_reply_to(&b.router, 2, Message::pickled("again", recv.handle()).unwrap());
        assert!(err.contains("is unidirectional"), "{err}");
        assert!(recv.empty());
        // The parent itself may still talk to both.
        master.router.context_by_id(2).send(Message::pickled("from parent", recv.handle()).unwrap());
        assert_eq!(recv.get_data_timeout::<String>(WAIT).unwrap(), "from parent");
    });
}

#[test]
fn handlers_may_route_reentrantly_to_themselves() {
    run(|| {
        let node = Node::new(0, vec![]);
        let got = Arc::new(Latch::new());
        let (g, r) = (got.clone(), node.router.clone());
        let h = node
            .router
            .add_handler(
                move |m| {
                    let n: u32 = m.unpickle().unwrap();
                    if n < 3 {
                        r.myself().send(Message::pickled(&(n + 1), m.handle).unwrap());
                    }
                    g.put(n).unwrap();
                },
                HandlerOptions::default(),
            )
            .unwrap();
        node.router.myself().send(Message::pickled(&0u32, h).unwrap());
        let seen: Vec<u32> = (0..4).map(|_| got.get_timeout(WAIT).unwrap()).collect();
        assert_eq!(seen.len(), 4);
    });
}
