//! Broker: defer, shutdown with grace period, exit delivering dead messages, panicking work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitogen::core::{socketpair, Broker, BrokerOptions, HandlerOptions, Latch, Message, Receiver, Router, Stream};
use mitogen_tests::{run, WAIT};

#[test]
fn defer_runs_on_the_broker_thread_and_inline_there() {
    run(|| {
        let broker = Broker::new().unwrap();
        let latch = Arc::new(Latch::new());
        let (l, b) = (latch.clone(), broker.clone());
        broker
            .defer(move || {
                let order = Arc::new(AtomicUsize::new(0));
                let o = order.clone();
                // From the broker thread, defer runs at once, before the next statement.
                b.defer(move || o.store(1, Ordering::SeqCst)).unwrap();
                l.put((b.on_broker_thread(), order.load(Ordering::SeqCst))).unwrap();
            })
            .unwrap();
        assert_eq!(latch.get_timeout(WAIT).unwrap(), (true, 1));
        assert!(!broker.on_broker_thread());
        broker.shutdown();
        broker.join();
    });
}

#[test]
fn defer_after_exit_is_an_error() {
    run(|| {
        let broker = Broker::new().unwrap();
        broker.shutdown();
        broker.join();
        assert!(broker.exited());
        let err = broker.defer(|| ()).unwrap_err();
        assert!(err.to_string().contains("broker has exited"), "{err}");
    });
}

#[test]
fn panicking_deferred_work_is_logged_and_the_broker_lives_on() {
    run(|| {
        let broker = Broker::new().unwrap();
        broker.defer(|| panic!("deliberate panic in deferred work")).unwrap();
        let latch = Arc::new(Latch::new());
        let l = latch.clone();
        broker.defer(move || l.put("still alive").unwrap()).unwrap();
        assert_eq!(latch.get_timeout(WAIT).unwrap(), "still alive");
        broker.shutdown();
        broker.join();
    });
}

#[test]
fn shutdown_calls_on_shutdown_then_forces_disconnect_after_the_grace_period() {
    run(|| {
        let grace = Duration::from_millis(300);
        let broker = Broker::with_options(BrokerOptions { shutdown_timeout: grace, ..Default::default() }).unwrap();
        let router = Router::new(&broker);
        let (a, _peer) = socketpair().unwrap();
        let stream = Stream::message(&router, "stubborn", a).unwrap();
        let asked = Arc::new(AtomicBool::new(false));
        let asked2 = asked.clone();
        // Like a parent's stream to a child: on shutdown it only asks, and waits to be closed.
        stream.set_on_shutdown(move |_, _| asked2.store(true, Ordering::SeqCst));
        let disconnected = Arc::new(Latch::new());
        let d = disconnected.clone();
        stream.on_disconnect_listener(move |_| d.put(Instant::now()).unwrap());
        router.register(&router.context_by_id(5), &stream);
        crate::fixtures::sync(&broker);
        assert!(broker.keep_alive(), "a registered message stream keeps the broker alive");
        let t0 = Instant::now();
        broker.shutdown();
        broker.join();
        assert!(asked.load(Ordering::SeqCst), "on_shutdown hook ran");
        let when = disconnected.try_get().expect("stream was force-disconnected");
        assert!(when.duration_since(t0) >= grace, "forced only after the grace period");
        assert!(stream.is_disconnected());
    });
}

#[test]
fn graceful_shutdown_disconnects_ordinary_streams_without_waiting() {
    run(|| {
        let broker = Broker::with_options(BrokerOptions { shutdown_timeout: WAIT, ..Default::default() }).unwrap();
        let router = Router::new(&broker);
        let (a, _peer) = socketpair().unwrap();
        let stream = Stream::message(&router, "ordinary", a).unwrap();
        router.register(&router.context_by_id(5), &stream);
        broker.shutdown();
        broker.join();
        assert!(stream.is_disconnected());
    });
}

#[test]
fn broker_exit_wakes_every_blocked_receiver_with_channel_error() {
    run(|| {
        let broker = Broker::new().unwrap();
        let router = Router::new(&broker);
        let recvs: Vec<Receiver> = (0..4).map(|_| Receiver::new(&router).unwrap()).collect();
        let waiters: Vec<_> = recvs.iter().cloned().map(|r| std::thread::spawn(move || r.get_timeout(WAIT))).collect();
        broker.shutdown();
        broker.join();
        for w in waiters {
            let err = w.join().unwrap().unwrap_err();
            assert!(err.is_channel() && err.to_string().contains("broker exited"), "{err}");
        }
        // A receiver made after the exit fails at once instead of sleeping forever.
        let late = Receiver::new(&router).unwrap();
        assert!(late.get_timeout(WAIT).unwrap_err().is_channel());
    });
}

#[test]
fn panicking_handler_is_logged_and_the_broker_lives_on() {
    run(|| {
        let broker = Broker::new().unwrap();
        let router = Router::new(&broker);
        let handle = router.add_handler(|_| panic!("deliberate handler panic"), HandlerOptions::default()).unwrap();
        let mut msg = Message::raw(handle, vec![]);
        msg.dst_id = router.context_id();
        router.route(msg);
        let recv = Receiver::new(&router).unwrap();
        recv.to_sender().send(&1u8).unwrap();
        assert_eq!(recv.get_data_timeout::<u8>(WAIT).unwrap(), 1);
        broker.shutdown();
        broker.join();
    });
}
