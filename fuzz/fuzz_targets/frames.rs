//! The frame decoder on arbitrary bytes: it never panics, never yields a frame over the limit,
//! and decodes the same frames (or fails the same way) whatever sizes the bytes arrive in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mitogen_core::wire::{decode_frames, FrameDecoder};

const MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let whole = decode_frames(data, MAX);
    // The same bytes in pieces of 1..=64 bytes, the size taken from the input itself.
    let step = data.first().map_or(1, |&b| usize::from(b % 64) + 1);
    let mut decoder = FrameDecoder::new(MAX);
    let mut pieces = Vec::new();
    let mut failed = false;
    for chunk in data.chunks(step) {
        if decoder.feed(chunk, &mut pieces).is_err() {
            failed = true;
            break;
        }
    }
    match whole {
        Ok(frames) => {
            assert!(!failed, "fed in pieces, the same bytes failed");
            assert_eq!(frames.len(), pieces.len());
            for (a, b) in frames.iter().zip(&pieces) {
                assert_eq!(a.header, b.header);
                assert_eq!(a.data, b.data);
                assert!(a.data.len() <= MAX && a.data.len() == a.header.len);
            }
        }
        Err(e) => {
            assert!(failed, "fed in pieces, the same bytes decoded: {e}");
            assert!(e.is_stream());
        }
    }
});
