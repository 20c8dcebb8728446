//! Streams between routers: bulk exchange, framing, malformed input, transmit queueing.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use mitogen::core::{socketpair, Latch, Message, Receiver, Stream, HEADER_LEN};
use mitogen_tests::{run, wait_until, WAIT};

use crate::fixtures::Pair;

#[test]
fn two_routers_exchange_100000_messages_each_way_in_order() {
    run(|| {
        const N: u32 = 100_000;
        let pair = Pair::new();
        let at_master = Receiver::new(&pair.master.router).unwrap();
        let at_child = Receiver::new(&pair.child.router).unwrap();
        let to_child = mitogen::core::Sender::new(pair.master.router.context_by_id(1), at_child.handle());
        let to_master = mitogen::core::Sender::new(pair.child.router.context_by_id(0), at_master.handle());
        let senders = [
            std::thread::spawn(move || (0..N).for_each(|i| to_child.send(&i).unwrap())),
            std::thread::spawn(move || (0..N).for_each(|i| to_master.send(&i).unwrap())),
        ];
        let receivers: Vec<_> = [at_master, at_child]
            .into_iter()
            .map(|r| {
                std::thread::spawn(move || {
                    for want in 0..N {
                        let got: u32 = r.get_data_timeout(WAIT).unwrap();
                        assert_eq!(got, want, "message lost or reordered");
                    }
                    assert!(r.empty(), "no extra messages");
                })
            })
            .collect();
        senders.into_iter().for_each(|t| t.join().unwrap());
        receivers.into_iter().for_each(|t| t.join().unwrap());
    });
}

/// A raw peer on a stream registered with the master as context `id`; returns the test's end
/// and a latch that fires when the master disconnects the stream.
fn raw_peer(pair: &Pair, id: u32) -> (UnixStream, Arc<Latch<()>>) {
    let (ours, theirs) = socketpair().unwrap();
    let stream = Stream::message(&pair.master.router, format!("raw-{id}"), theirs).unwrap();
    pair.master.router.register(&pair.master.router.context_by_id(id), &stream);
    // After register: listeners run in order, so the router has dropped the route when this fires.
    let gone = Arc::new(Latch::new());
    let g = gone.clone();
    stream.on_disconnect_listener(move |_| g.put(()).unwrap());
    let ours = UnixStream::from(ours);
    ours.set_nonblocking(false).unwrap();
    (ours, gone)
}

/// The master and its well-behaved child still exchange messages.
fn assert_pair_still_works(pair: &Pair) {
    let recv = Receiver::new(&pair.master.router).unwrap();
    let sender = mitogen::core::Sender::new(pair.child.router.context_by_id(0), recv.handle());
    sender.send("still here").unwrap();
    assert_eq!(recv.get_data_timeout::<String>(WAIT).unwrap(), "still here");
}

#[test]
fn a_peer_writing_garbage_is_disconnected_and_other_streams_go_on() {
    run(|| {
        let pair = Pair::new();
        let (mut peer, gone) = raw_peer(&pair, 9);
        peer.write_all(b"GET / HTTP/1.0\r\n\r\nthis is not the mitogen protocol").unwrap();
        gone.get_timeout(WAIT).expect("garbage stream disconnected");
        assert_eq!(pair.master.router.stream_by_id(9), None, "its route is gone");
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).unwrap(), 0, "the master closed its end");
        assert_pair_still_works(&pair);
    });
}

#[test]
fn an_oversized_frame_disconnects_only_that_stream() {
    run(|| {
        let pair = Pair::new();
        let (mut peer, gone) = raw_peer(&pair, 9);
        let mut msg = Message::raw(1000, vec![]);
        msg.dst_id = 0;
        msg.src_id = 9;
        msg.auth_id = 9;
        let mut header = msg.header();
        header[22..26].copy_from_slice(&(200u32 << 20).to_be_bytes()); // announces 200 MiB
        peer.write_all(&header).unwrap();
        gone.get_timeout(WAIT).expect("oversized frame disconnects the stream");
        assert_pair_still_works(&pair);
    });
}

#[test]
fn frames_written_a_byte_at_a_time_are_reassembled() {
    run(|| {
        let pair = Pair::new();
        let (mut peer, _gone) = raw_peer(&pair, 9);
        let recv = Receiver::new(&pair.master.router).unwrap();
        let mut bytes = Vec::new();
        for word in ["one", "two", "three"] {
            let mut m = Message::pickled(word, recv.handle()).unwrap();
            (m.dst_id, m.src_id, m.auth_id) = (0, 9, 9);
            bytes.extend_from_slice(&m.header());
            bytes.extend_from_slice(&m.data);
        }
        assert!(bytes.len() > 3 * HEADER_LEN);
        for b in &bytes {
            peer.write_all(std::slice::from_ref(b)).unwrap();
        }
        let got: Vec<String> = (0..3).map(|_| recv.get_data_timeout(WAIT).unwrap()).collect();
        assert_eq!(got, ["one", "two", "three"]);
    });
}

#[test]
fn bytes_queue_while_the_peer_is_slow_and_drain_when_it_reads() {
    run(|| {
        let pair = Pair::new();
        let (mut peer, _gone) = raw_peer(&pair, 9);
        let big = Message::raw(1000, vec![7u8; 4 << 20]);
        pair.master.router.context_by_id(9).send(big);
        // The socket buffer holds far less than 4 MiB: the rest waits in the stream's queue.
        let stream = pair.master.router.stream_by_id(9).unwrap();
        wait_until("bytes to queue", WAIT, || stream.pending_bytes() > 0);
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        while total < HEADER_LEN + (4 << 20) {
            total += peer.read(&mut buf).unwrap();
        }
        assert_eq!(total, HEADER_LEN + (4 << 20));
        wait_until("queue to drain", WAIT, || stream.pending_bytes() == 0);
        peer.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        assert!(peer.read(&mut buf).is_err(), "nothing more was sent");
    });
}
