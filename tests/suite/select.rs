//! Select: oneshot, add/remove, close, nesting, cycles, Select::all, the receiver field.

use std::time::Duration;

use mitogen::core::{Message, Receiver, Router};
use mitogen::select::{Select, Selectable};
use mitogen_tests::{run, wait_until, WAIT};

use crate::fixtures::Node;

fn receivers(router: &Router, n: usize) -> Vec<Receiver> {
    (0..n).map(|_| Receiver::new(router).unwrap()).collect()
}

#[test]
fn oneshot_select_yields_each_receiver_once_and_sets_the_receiver_field() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recvs = receivers(&node.router, 3);
        let select = Select::new(&recvs, true).unwrap();
        assert!(select.has_receivers());
        for (i, r) in recvs.iter().enumerate() {
            r.to_sender().send(&(i as u32)).unwrap();
            r.to_sender().send(&(100 + i as u32)).unwrap();
        }
        crate::fixtures::sync(node.broker());
        let mut seen = Vec::new();
        for msg in &select {
            let msg = msg.unwrap();
            let v: u32 = msg.unpickle().unwrap();
            let from = msg.receiver.clone().expect("receiver field set");
            assert_eq!(from, recvs[v as usize], "message {v} came from its own receiver");
            seen.push(v);
        }
        seen.sort_unstable();
        assert_eq!(seen, vec![0, 1, 2], "each receiver removed after its first message");
        assert!(!select.has_receivers());
        // Their second messages were not taken by the select.
        for (i, r) in recvs.iter().enumerate() {
            assert_eq!(r.get_data_timeout::<u32>(WAIT).unwrap(), 100 + i as u32);
        }
        let err = select.get_timeout(Duration::from_millis(10)).unwrap_err();
        assert!(err.to_string().contains("Select instance is empty"), "{err}");
    });
}

#[test]
fn persistent_select_keeps_receivers_until_removed() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recvs = receivers(&node.router, 2);
        let select = Select::empty_select(false);
        assert!(!select.has_receivers());
        select.add(&recvs[0]).unwrap();
        select.add(&recvs[1]).unwrap();
        assert!(select.empty());
        for _ in 0..3 {
            recvs[0].to_sender().send("a").unwrap();
        }
        for _ in 0..3 {
            assert_eq!(select.get_timeout(WAIT).unwrap().unpickle::<String>().unwrap(), "a");
        }
        assert!(select.has_receivers());
        select.remove(&recvs[0]).unwrap();
        let err = select.remove(&recvs[0]).unwrap_err();
        assert!(err.to_string().contains("is not a member"), "{err}");
        recvs[0].to_sender().send("ignored").unwrap();
        recvs[1].to_sender().send("b").unwrap();
        assert_eq!(select.get_timeout(WAIT).unwrap().unpickle::<String>().unwrap(), "b");
        assert!(select.try_get().unwrap_err().is_timeout());
        assert_eq!(recvs[0].get_data_timeout::<String>(WAIT).unwrap(), "ignored");
    });
}

#[test]
fn messages_queued_before_add_are_announced() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recv = Receiver::new(&node.router).unwrap();
        for i in 0..3u8 {
            recv.to_sender().send(&i).unwrap();
        }
        crate::fixtures::sync(node.broker());
        let select = Select::new([&recv], false).unwrap();
        let got: Vec<u8> = (0..3).map(|_| select.get_timeout(WAIT).unwrap().unpickle().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2]);
    });
}

#[test]
fn close_wakes_a_waiting_thread_with_latch_error() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recv = Receiver::new(&node.router).unwrap();
        let select = Select::new([&recv], true).unwrap();
        let s = select.clone();
        let waiter = std::thread::spawn(move || s.get_timeout(WAIT));
        select.close();
        assert!(waiter.join().unwrap().unwrap_err().is_latch());
        assert!(recv.notify().is_none(), "close detaches from the receivers");
        // The receiver may join another select now.
        Select::new([&recv], true).unwrap();
    });
}

#[test]
fn nested_selects_deliver_and_cycles_are_refused() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recvs = receivers(&node.router, 4);
        let inner_a = Select::new(&recvs[0..2], true).unwrap();
        let inner_b = Select::new(&recvs[2..4], true).unwrap();
        let deeper = Select::new([&inner_b], true).unwrap();
        let outer = Select::new([&inner_a, &deeper], true).unwrap();
        let err = inner_a.add(&outer).unwrap_err();
        assert!(err.to_string().contains("cannot add a Select to itself"), "{err}");
        let err = outer.add(&outer).unwrap_err();
        assert!(err.to_string().contains("cannot add a Select to itself"), "{err}");
        let err = Select::new([&inner_a], true).unwrap_err();
        assert!(err.to_string().contains("already belongs to a Select"), "{err}");

        recvs[3].to_sender().send("deep").unwrap();
        let msg = outer.get_timeout(WAIT).unwrap();
        assert_eq!(msg.unpickle::<String>().unwrap(), "deep");
        assert_eq!(msg.receiver, Some(recvs[3].clone()), "the innermost receiver is reported");
        recvs[0].to_sender().send("shallow").unwrap();
        assert_eq!(outer.get_timeout(WAIT).unwrap().unpickle::<String>().unwrap(), "shallow");
    });
}

#[test]
fn all_returns_results_in_arrival_order() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recvs = receivers(&node.router, 5);
        let rs = recvs.clone();
        let gatherer = std::thread::spawn(move || Select::all::<_, _, u32>(rs));
        wait_until("Select::all to take every receiver", WAIT, || recvs.iter().all(|r| r.notify().is_some()));
        // Answer in reverse order of creation, one at a time, so arrival order is known.
        for (i, r) in recvs.iter().enumerate().rev() {
            r.to_sender().send(&(i as u32)).unwrap();
            crate::fixtures::sync(node.broker());
        }
        assert_eq!(gatherer.join().unwrap().unwrap(), vec![4, 3, 2, 1, 0]);
    });
}

#[test]
fn all_raises_a_dead_receiver_as_channel_error() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recvs = receivers(&node.router, 2);
        recvs[0].to_sender().send(&1u32).unwrap();
        recvs[1].to_sender().close();
        let err = Select::all::<_, _, u32>(recvs).unwrap_err();
        assert!(err.is_channel() && err.to_string().contains("sender closed"), "{err}");
    });
}

#[test]
fn a_select_waits_on_latches_beside_receivers() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recv = Receiver::new(&node.router).unwrap();
        let latch = std::sync::Arc::new(mitogen::core::Latch::new());
        let select = Select::new([Selectable::from(&recv), Selectable::from(&latch)], true).unwrap();
        let l = latch.clone();
        let putter = std::thread::spawn(move || l.put(Message::pickled("from the latch", 0).unwrap()).unwrap());
        let msg = select.get_timeout(WAIT).unwrap();
        assert_eq!(msg.unpickle::<String>().unwrap(), "from the latch");
        assert!(msg.receiver.is_none(), "it came from the latch");
        putter.join().unwrap();
        recv.to_sender().send(&5u32).unwrap();
        assert_eq!(select.get_timeout(WAIT).unwrap().unpickle::<u32>().unwrap(), 5);
        assert!(!select.has_receivers(), "oneshot removed both");
        let again = Select::new([Selectable::from(&latch)], false).unwrap();
        assert!(Select::new([Selectable::from(&latch)], false).is_err(), "a latch belongs to one select");
        drop(again);
    });
}
