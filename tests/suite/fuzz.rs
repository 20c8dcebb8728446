//! Random and mutated frames fed to the decoder and to a live router, for a bounded time: the
//! decoder never panics, and a router disconnects bad streams while serving good ones.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mitogen::core::{decode_frames, socketpair, Message, Receiver, Stream, HEADER_LEN};
use mitogen_tests::{run, WAIT};

use crate::fixtures::Pair;

/// xorshift64*: deterministic per seed, so a failure can be replayed from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn valid_frames(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n {
        let len = rng.below(64);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut m = Message::raw(rng.next() as u32, data);
        (m.dst_id, m.src_id, m.auth_id, m.reply_to) = (0, 9, 9, rng.next() as u32 % 2000);
        out.extend_from_slice(&m.header());
        out.extend_from_slice(&m.data);
    }
    out
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            1 => bytes.truncate(rng.below(bytes.len() + 1)),
            2 => {
                let i = rng.below(bytes.len() + 1);
                let junk: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
                bytes.splice(i..i, junk);
            }
            _ if bytes.len() >= HEADER_LEN => {
                // Corrupt a length field: the most dangerous header word.
                let i = HEADER_LEN - 4;
                bytes[i..HEADER_LEN].copy_from_slice(&(rng.next() as u32).to_be_bytes());
            }
            _ => {}
        }
    }
}

#[test]
fn the_decoder_never_panics_on_random_or_mutated_input() {
    run(|| {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        eprintln!("fuzz seed {seed}");
        let mut rng = Rng(seed);
        let deadline = Instant::now() + Duration::from_secs(2);
        let (mut runs, mut ok, mut refused) = (0u64, 0u64, 0u64);
        while Instant::now() < deadline {
            let mut bytes = if rng.below(4) == 0 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                let n = 1 + rng.below(5);
                valid_frames(&mut rng, n)
            };
            mutate(&mut rng, &mut bytes);
            match decode_frames(&bytes, 1 << 20) {
                Ok(msgs) => {
                    ok += 1;
                    assert!(msgs.iter().all(|m| m.data.len() <= 1 << 20));
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.is_stream(), "seed {seed}: {e}");
                }
            }
            runs += 1;
        }
        eprintln!("{runs} inputs: {ok} decoded, {refused} refused");
        assert!(ok > 0 && refused > 0, "both outcomes exercised");
    });
}

#[test]
fn a_router_survives_mutated_frames_on_many_streams() {
    run(|| {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
        eprintln!("fuzz seed {seed}");
        let mut rng = Rng(seed);
        let pair = Pair::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut id = 100;
        while Instant::now() < deadline {
            let (ours, theirs) = socketpair().unwrap();
            let stream = Stream::message(&pair.master.router, format!("fuzz-{id}"), theirs).unwrap();
            let gone = std::sync::Arc::new(mitogen::core::Latch::new());
            let g = gone.clone();
            stream.on_disconnect_listener(move |_| g.put(()).unwrap());
            pair.master.router.register(&pair.master.router.context_by_id(9), &stream);
            let n = 1 + rng.below(5);
            let mut bytes = valid_frames(&mut rng, n);
            mutate(&mut rng, &mut bytes);
            let mut peer = UnixStream::from(ours);
            peer.set_nonblocking(false).unwrap();
            let _ = peer.write_all(&bytes);
            // Hang up; whatever the router made of the bytes, the stream must then go away.
            drop(peer);
            gone.get_timeout(WAIT).expect("the stream disconnects");
            id += 1;
        }
        // The router and the healthy child are unharmed.
        let recv = Receiver::new(&pair.master.router).unwrap();
        mitogen::core::Sender::new(pair.child.router.context_by_id(0), recv.handle()).send("alive").unwrap();
        assert_eq!(recv.get_data_timeout::<String>(WAIT).unwrap(), "alive");
        eprintln!("{} streams fed mutated frames", id - 100);
    });
}
