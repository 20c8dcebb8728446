//! fork(): copies of this process as children, hooks, and forking while other threads work.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mitogen::core::Receiver;
use mitogen::master::{ForkOptions, Options, Router};
use mitogen_tests::{run, WAIT};

use crate::fixtures::Pair;

static MARK: AtomicU32 = AtomicU32::new(0);

fn mark() -> u32 {
    MARK.load(Ordering::SeqCst)
}

mitogen::remote!(mark);

#[test]
fn a_forked_child_serves_calls_and_runs_its_hooks_in_the_child() {
    run(|| {
        MARK.store(1, Ordering::SeqCst);
        let router = Router::new(None).unwrap();
        let opts = ForkOptions {
            options: Options::default(),
            on_fork: Some(Arc::new(|| {
                MARK.fetch_add(10, Ordering::SeqCst);
            })),
            on_start: Some(Arc::new(|ec: &mitogen::core::ExternalContext| {
                MARK.fetch_add(100 * ec.config().context_id, Ordering::SeqCst);
            })),
        };
        let child = router.fork(opts).unwrap();
        let (id, pid, parents) = child.call(super::local_whoami, ()).unwrap();
        assert_eq!((id, parents), (child.context_id(), vec![0]));
        assert_ne!(pid, std::process::id());
        // The child inherited MARK = 1, then its hooks ran there, not here.
        assert_eq!(child.call(mark, ()).unwrap(), 1 + 10 + 100 * child.context_id());
        assert_eq!(mark(), 1);
        router.shutdown_and_join();
    });
}

#[test]
fn forking_200_children_while_other_threads_stream_messages_does_not_deadlock() {
    run(|| {
        let pair = Pair::new();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let streams: Vec<_> = (0..2)
            .map(|i| {
                let (from, to) = if i == 0 {
                    (pair.master.router.clone(), pair.child.router.clone())
                } else {
                    (pair.child.router.clone(), pair.master.router.clone())
                };
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let recv = Receiver::new(&to).unwrap();
                    let sender = mitogen::core::Sender::new(from.context_by_id(to.context_id()), recv.handle());
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        sender.send(&n).unwrap();
                        assert_eq!(recv.get_data_timeout::<u64>(WAIT).unwrap(), n);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let router = Router::new(None).unwrap();
        for i in 0..200 {
            let child = router.fork(ForkOptions::default()).unwrap();
            assert_eq!(child.call(super::local_whoami, ()).unwrap().0, child.context_id(), "fork {i}");
            child.shutdown(false).unwrap().get_timeout(WAIT).unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        for t in streams {
            assert!(t.join().unwrap() > 0, "the streaming threads made progress");
        }
        router.shutdown_and_join();
    });
}
