//! Latch: many threads, hand-off, close, timeouts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mitogen::core::Latch;
use mitogen_tests::{run, wait_until, WAIT};

#[test]
fn eight_threads_hammering_one_latch_lose_nothing_and_keep_fifo_per_producer() {
    run(|| {
        const PER: u32 = 20_000;
        const SENTINEL: u32 = u32::MAX;
        let latch = Arc::new(Latch::<(u32, u32)>::new());
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let l = latch.clone();
                std::thread::spawn(move || (0..PER).for_each(|i| l.put((p, i)).unwrap()))
            })
            .collect();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let l = latch.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    // Until a sentinel (put once every producer is done), however slow they are.
                    while let Ok(item) = l.get_timeout(mitogen_tests::WAIT) {
                        if item.0 == SENTINEL {
                            break;
                        }
                        got.push(item);
                    }
                    got
                })
            })
            .collect();
        producers.into_iter().for_each(|t| t.join().unwrap());
        (0..4).for_each(|_| latch.put((SENTINEL, 0)).unwrap());
        let mut all: HashMap<u32, Vec<u32>> = HashMap::new();
        for c in consumers {
            let got = c.join().unwrap();
            // Within one consumer, each producer's items appear in the order they were put.
            let mut last: HashMap<u32, u32> = HashMap::new();
            for (p, i) in got {
                if let Some(prev) = last.insert(p, i) {
                    assert!(i > prev, "producer {p}: item {i} after {prev}");
                }
                all.entry(p).or_default().push(i);
            }
        }
        for p in 0..4 {
            let mut items = all.remove(&p).unwrap_or_default();
            items.sort_unstable();
            assert_eq!(items, (0..PER).collect::<Vec<_>>(), "producer {p}: items lost or duplicated");
        }
    });
}

#[test]
fn close_wakes_all_eight_sleepers_with_latch_error() {
    run(|| {
        let latch = Arc::new(Latch::<u8>::new());
        let sleepers: Vec<_> = (0..8)
            .map(|_| {
                let l = latch.clone();
                std::thread::spawn(move || l.get_timeout(WAIT))
            })
            .collect();
        wait_until("8 threads asleep on the latch", WAIT, || latch.sleeping() == 8);
        latch.close();
        for t in sleepers {
            let err = t.join().unwrap().unwrap_err();
            assert!(err.is_latch(), "expected LatchError, got {err}");
        }
        assert!(latch.put(1).unwrap_err().is_latch());
    });
}

#[test]
fn put_wakes_exactly_one_sleeper() {
    run(|| {
        let latch = Arc::new(Latch::<u32>::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let sleepers: Vec<_> = (0..2)
            .map(|_| {
                let (l, tx) = (latch.clone(), tx.clone());
                std::thread::spawn(move || tx.send(l.get_timeout(WAIT).unwrap()).unwrap())
            })
            .collect();
        wait_until("2 sleepers", WAIT, || latch.sleeping() == 2);
        latch.put(7).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), 7);
        // The other thread is still asleep and was not handed anything.
        assert_eq!(latch.sleeping(), 1);
        assert!(rx.try_recv().is_err());
        latch.put(8).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), 8);
        sleepers.into_iter().for_each(|t| t.join().unwrap());
    });
}

#[test]
fn timed_get_waits_at_least_its_timeout_and_then_fails() {
    run(|| {
        let latch = Latch::<u8>::new();
        for ms in [1u64, 20, 100] {
            let t0 = Instant::now();
            let err = latch.get_timeout(Duration::from_millis(ms)).unwrap_err();
            assert!(err.is_timeout(), "{err}");
            assert!(t0.elapsed() >= Duration::from_millis(ms));
        }
        assert_eq!(latch.sleeping(), 0, "timed-out sleepers remove themselves");
        let err = latch.get_deadline(Instant::now()).unwrap_err();
        assert!(err.is_timeout());
    });
}

#[test]
fn sub_millisecond_timeout_does_not_round_down_to_a_spin() {
    run(|| {
        let latch = Latch::<u8>::new();
        let t0 = Instant::now();
        assert!(latch.get_timeout(Duration::from_micros(300)).unwrap_err().is_timeout());
        assert!(t0.elapsed() >= Duration::from_micros(300));
    });
}
