//! Receiver, Sender, Channel and core Context: waiting, closing, iteration, serialized senders.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitogen::core::{CallError, Channel, Context, HandlerOptions, Message, Receiver, Sender};
use mitogen_tests::{run, wait_until, WAIT};

use crate::fixtures::{Node, Pair};

#[test]
fn get_times_out_and_try_get_does_not_block() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recv = Receiver::new(&node.router).unwrap();
        assert!(recv.empty());
        assert!(recv.try_get().unwrap_err().is_timeout());
        let t0 = Instant::now();
        assert!(recv.get_timeout(Duration::from_millis(50)).unwrap_err().is_timeout());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        recv.to_sender().send(&5u8).unwrap();
        wait_until("delivery", WAIT, || !recv.empty());
        assert_eq!(recv.try_get().unwrap().unpickle::<u8>().unwrap(), 5);
    });
}

#[test]
fn iteration_yields_messages_until_the_sender_closes() {
    run(|| {
        let pair = Pair::new();
        let recv = Receiver::new(&pair.master.router).unwrap();
        let sender = Sender::new(pair.child.router.context_by_id(0), recv.handle());
        for i in 0..3u32 {
            sender.send(&i).unwrap();
        }
        sender.close();
        let got: Vec<u32> = recv.iter().map(|m| m.unpickle().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        let err = recv.get_timeout(Duration::from_millis(10)).unwrap_err();
        assert!(err.is_timeout(), "the dead message was consumed by the iteration: {err}");
    });
}

#[test]
fn close_wakes_a_waiting_thread_with_channel_error() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recv = Receiver::new(&node.router).unwrap();
        let r = recv.clone();
        let waiter = std::thread::spawn(move || r.get_timeout(WAIT));
        recv.close();
        let err = waiter.join().unwrap().unwrap_err();
        assert!(err.is_channel() && err.to_string().contains("is closed"), "{err}");
        assert!(recv.get().unwrap_err().is_channel());
        assert!(!node.router.has_handler(recv.handle()), "close unregisters the handle");
    });
}

#[test]
fn dropping_the_last_clone_unregisters_the_handle() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recv = Receiver::new(&node.router).unwrap();
        let handle = recv.handle();
        assert!(node.router.has_handler(handle));
        drop(recv);
        assert!(!node.router.has_handler(handle));
    });
}

#[test]
fn notify_runs_on_each_delivery() {
    run(|| {
        let node = Node::new(0, vec![]);
        let recv = Receiver::new(&node.router).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        recv.set_notify(Some(Arc::new(move |_: &Receiver| {
            c.fetch_add(1, Ordering::SeqCst);
        })));
        for i in 0..3u8 {
            recv.to_sender().send(&i).unwrap();
        }
        for _ in 0..3 {
            recv.get_timeout(WAIT).unwrap();
        }
        // As in Mitogen, notify runs on the broker thread right after the message is queued, so
        // the last get may return before the last notify has run: wait for the broker to
        // finish that delivery (its queue is FIFO) before counting.
        crate::fixtures::sync(node.broker());
        assert_eq!(count.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn a_sender_passed_to_another_context_sends_back_to_its_origin() {
    run(|| {
        let pair = Pair::new();
        // The child serves "give me a sender and I will send you pong".
        let h = pair
            .child
            .router
            .add_handler(
                |m| {
                    let (sender, ctx): (Sender, Context) = m.unpickle().unwrap();
                    assert_eq!(ctx.context_id(), 0);
                    sender.send("pong").unwrap();
                    sender.close();
                },
                HandlerOptions::default(),
            )
            .unwrap();
        let recv = Receiver::new(&pair.master.router).unwrap();
        let payload = (recv.to_sender(), pair.master.router.myself());
        pair.master.router.context_by_id(1).send(Message::pickled(&payload, h).unwrap());
        assert_eq!(recv.get_data_timeout::<String>(WAIT).unwrap(), "pong");
        assert!(recv.get_timeout(WAIT).unwrap_err().is_channel(), "then the sender closed");
    });
}

#[test]
fn a_sender_cannot_be_decoded_outside_a_router() {
    run(|| {
        let node = Node::new(0, vec![]);
        let bytes = mitogen::core::encode(&Receiver::new(&node.router).unwrap().to_sender()).unwrap();
        let msg = Message { data: bytes, ..Message::default() };
        let err = msg.unpickle::<Sender>().unwrap_err();
        assert!(err.is_stream() && err.to_string().contains("decoded from a message received by a router"), "{err}");
    });
}

#[test]
fn channels_talk_both_ways() {
    run(|| {
        let pair = Pair::new();
        // Each end must know the other's handle: agree on them up front.
        let master_end =
            Channel::new(&pair.master.router, pair.master.router.context_by_id(1), 5001, Some(5000)).unwrap();
        let child_end = Channel::new(&pair.child.router, pair.child.router.context_by_id(0), 5000, Some(5001)).unwrap();
        master_end.send("ping").unwrap();
        assert_eq!(child_end.get().unwrap().unpickle::<String>().unwrap(), "ping");
        child_end.send("pong").unwrap();
        assert_eq!(master_end.get().unwrap().unpickle::<String>().unwrap(), "pong");
        child_end.close();
        assert!(master_end.get().unwrap_err().is_channel());
    });
}

#[test]
fn send_await_returns_the_reply_or_times_out() {
    run(|| {
        let pair = Pair::new();
        let echo = pair
            .child
            .router
            .add_handler(|m| m.reply(&(m.unpickle::<u32>().unwrap() * 2), None).unwrap(), HandlerOptions::default())
            .unwrap();
        let silent = pair.child.router.add_handler(|_| (), HandlerOptions::default()).unwrap();
        let failing = pair
            .child
            .router
            .add_handler(
                |m| m.reply_message(Message::call_error(&CallError::new("demo::Error", "it broke"), 0), None).unwrap(),
                HandlerOptions::default(),
            )
            .unwrap();
        let child = pair.master.router.context_by_id(1);
        let v: u32 = child.send_await(Message::pickled(&21u32, echo).unwrap(), Some(WAIT)).unwrap();
        assert_eq!(v, 42);
        let err = child.send_await::<u32>(Message::raw(silent, vec![]), Some(Duration::from_millis(50))).unwrap_err();
        assert!(err.is_timeout(), "{err}");
        let err = child.send_await::<u32>(Message::raw(failing, vec![]), Some(WAIT)).unwrap_err();
        assert_eq!(err.to_string(), "call failed: demo::Error: it broke");
        let recv = child.send_async(Message::pickled(&1u32, echo).unwrap(), false).unwrap();
        assert_eq!(recv.get_data_timeout::<u32>(WAIT).unwrap(), 2);
    });
}

#[test]
fn a_message_to_a_closed_receiver_gets_a_dead_reply() {
    run(|| {
        let pair = Pair::new();
        let recv = Receiver::new(&pair.child.router).unwrap();
        let handle = recv.handle();
        recv.close();
        let child = pair.master.router.context_by_id(1);
        let err = child.send_await::<u32>(Message::raw(handle, vec![]), Some(WAIT)).unwrap_err();
        assert!(err.is_channel() && err.to_string().contains("invalid handle"), "{err}");
    });
}
