//! A live master router fed arbitrary bytes on a child's stream, as a hostile or broken child
//! would send them: valid frames (of any header, to any handle, with any data), garbage, bad
//! magic, oversized announcements. After each input the stream has disconnected (at the latest
//! at end of file), and the router must still route: a message to a local receiver arrives.
#![no_main]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mitogen_core::{
    log_forwarded, socketpair, Broker, HandlerOptions, Identity, Latch, Receiver, Router, Stream, FORWARD_LOG,
};

struct World {
    router: Router,
    probe: Receiver,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let broker = Broker::new().expect("broker");
        let router = Router::with_identity(&broker, Identity::master());
        router.set_max_message_size(1 << 20);
        // What a master serves: ids, routes, logs.
        mitogen_parent::serve_allocate_id(&router, Arc::new(AtomicU32::new(1))).expect("ALLOCATE_ID");
        mitogen_parent::upgrade_router(&router);
        let options = HandlerOptions { handle: Some(FORWARD_LOG), ..Default::default() };
        router.add_handler(|msg| log_forwarded(&msg), options).expect("FORWARD_LOG");
        let probe = Receiver::new(&router).expect("probe");
        World { router, probe }
    })
}

static NEXT_CHILD: AtomicU32 = AtomicU32::new(1);

fuzz_target!(|data: &[u8]| {
    let w = world();
    let (ours, theirs) = socketpair().expect("socketpair");
    let child_id = NEXT_CHILD.fetch_add(1, Ordering::Relaxed);
    let stream = Stream::message(&w.router, format!("fuzz child {child_id}"), ours).expect("stream");
    let gone = Arc::new(Latch::new());
    let g = gone.clone();
    stream.on_disconnect_listener(move |_| {
        let _ = g.put(());
    });
    w.router.register(&w.router.context_by_id(child_id), &stream);
    // The child's bytes, then end of file. The socket buffer holds a whole input (max_len is
    // 64 KiB), so a blocking-free write of it all succeeds or the input is simply cut short.
    let _ = mitogen_core::sys::write(std::os::fd::AsFd::as_fd(&theirs), data);
    drop(theirs);
    // The broker read it all, then the end of file: it is alive and the stream is gone.
    gone.get_timeout(Duration::from_secs(10)).expect("the stream disconnects after end of file");
    // And the router still routes (checked every 16 inputs: a round trip costs as much as an
    // input, and a router broken by one input stays broken for the next ones).
    if child_id.is_multiple_of(16) {
        w.probe.to_sender().send(&child_id).expect("encode");
        let got: u32 = w.probe.get_data_timeout(Duration::from_secs(10)).expect("the router still delivers");
        assert_eq!(got, child_id);
    }
});
