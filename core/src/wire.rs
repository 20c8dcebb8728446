//! The wire format: frame headers, frames, and the encoding of message data. The bottom layer
//! of the protocol, with no router, stream or thread in it.
//!
//! A frame is a 26-byte big-endian [`Header`] then `len` bytes of data:
//! `magic u16 | dst_id u32 | src_id u32 | auth_id u32 | handle u32 | reply_to u32 | len u32`.
//! Encoded data is MessagePack (`rmp-serde`, struct fields by name); a [`CallError`] travels as
//! a MessagePack extension value, which serde never produces for other values, so the two
//! cannot be confused.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{CallError, Error, Result};

/// Magic number at the start of every frame header: `"MI"`.
pub const MAGIC: u16 = 0x4d49;
/// Length of a frame header in bytes:
/// `magic u16 | dst_id u32 | src_id u32 | auth_id u32 | handle u32 | reply_to u32 | length u32`,
/// big-endian.
pub const HEADER_LEN: usize = 26;
/// Default [`Router::max_message_size`](crate::Router::max_message_size): 128 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

/// `reply_to` value marking a dead message (Mitogen `IS_DEAD`).
pub const IS_DEAD: u32 = 999;
/// Handle of the executable responder (Mitogen `GET_MODULE`; here it serves the executable).
pub const GET_MODULE: u32 = 100;
/// Handle receiving function calls in every child (Mitogen `CALL_FUNCTION`).
pub const CALL_FUNCTION: u32 = 101;
/// Handle receiving forwarded log records in parents (Mitogen `FORWARD_LOG`).
pub const FORWARD_LOG: u32 = 102;
/// Handle receiving `(target_id, via_id)` route announcements (Mitogen `ADD_ROUTE`).
pub const ADD_ROUTE: u32 = 103;
/// Handle receiving lost-route announcements (Mitogen `DEL_ROUTE`).
pub const DEL_ROUTE: u32 = 104;
/// Handle allocating blocks of context ids in the master (Mitogen `ALLOCATE_ID`).
pub const ALLOCATE_ID: u32 = 105;
/// Handle asking a child to shut down gracefully (Mitogen `SHUTDOWN`).
pub const SHUTDOWN: u32 = 106;
/// Handle delivering executable chunks (Mitogen `LOAD_MODULE`).
pub const LOAD_MODULE: u32 = 107;
/// Handle forwarding executable chunks down a tree (Mitogen `FORWARD_MODULE`).
pub const FORWARD_MODULE: u32 = 108;
/// Handle announcing a detaching child (Mitogen `DETACHING`).
pub const DETACHING: u32 = 109;
/// Handle of the service pool (Mitogen `CALL_SERVICE`).
pub const CALL_SERVICE: u32 = 110;
/// Handles below this are reserved; [`Router::add_handler`](crate::Router::add_handler) allocates from here upwards.
pub const FIRST_DYNAMIC_HANDLE: u32 = 1000;

/// MessagePack extension type tag marking an encoded [`CallError`] (`'C'`).
const CALL_ERROR_EXT: i8 = 0x43;

/// A frame header, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Target context id.
    pub dst_id: u32,
    /// Source context id.
    pub src_id: u32,
    /// The context under whose authority the message acts.
    pub auth_id: u32,
    /// Target handle in the destination context.
    pub handle: u32,
    /// Handle replies go to, `0` for none, or [`IS_DEAD`].
    pub reply_to: u32,
    /// Length of the data that follows.
    pub len: usize,
}

impl Header {
    /// The 26 bytes of this header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        for (i, v) in [self.dst_id, self.src_id, self.auth_id, self.handle, self.reply_to].iter().enumerate() {
            h[2 + i * 4..6 + i * 4].copy_from_slice(&v.to_be_bytes());
        }
        h[22..26].copy_from_slice(&(self.len as u32).to_be_bytes());
        h
    }

    /// Decode 26 bytes.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the magic is wrong.
    pub fn parse(h: &[u8; HEADER_LEN]) -> Result<Header> {
        let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let magic = u16::from_be_bytes([h[0], h[1]]);
        if magic != MAGIC {
            return Err(Error::stream(format!("bad magic {magic:#06x} in frame header (expected {MAGIC:#06x})")));
        }
        Ok(Header {
            dst_id: word(2),
            src_id: word(6),
            auth_id: word(10),
            handle: word(14),
            reply_to: word(18),
            len: word(22) as usize,
        })
    }
}

/// A decoded frame: its header and its data.
#[derive(Debug)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The data, `header.len` bytes once complete.
    pub data: Vec<u8>,
}

/// Reassembles frames from arbitrary chunks: partial headers, partial data, many frames at once.
#[derive(Debug)]
pub struct FrameDecoder {
    header: Vec<u8>,
    current: Option<(Frame, usize)>,
    max_message_size: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_message_size`.
    pub fn new(max_message_size: usize) -> FrameDecoder {
        FrameDecoder { header: Vec::with_capacity(HEADER_LEN), current: None, max_message_size }
    }

    /// The buffer of a frame still missing at least `min` bytes, for reading straight into it
    /// (skipping a copy through the scratch buffer for bulk data).
    pub fn large_frame_buffer(&mut self, min: usize) -> Option<(&mut Vec<u8>, usize)> {
        match &mut self.current {
            Some((msg, len)) if *len - msg.data.len() >= min => {
                let left = *len - msg.data.len();
                Some((&mut msg.data, left))
            }
            _ => None,
        }
    }

    /// Move a frame completed by a direct read to `out`.
    pub fn finish_direct(&mut self, out: &mut Vec<Frame>) {
        if self.current.as_ref().is_some_and(|(m, len)| m.data.len() == *len) {
            out.push(self.current.take().expect("current frame").0);
        }
    }

    /// Consume `data`, pushing every completed message to `out`.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) on a bad magic or an announced length over the
    /// maximum; the stream must then be disconnected, since framing is lost.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Frame>) -> Result<()> {
        while !data.is_empty() || self.current.as_ref().is_some_and(|(m, len)| m.data.len() == *len) {
            match &mut self.current {
                None => {
                    let take = (HEADER_LEN - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.header.len() == HEADER_LEN {
                        let h: &[u8; HEADER_LEN] = self.header[..].try_into().expect("header length");
                        let header = Header::parse(h)?;
                        let len = header.len;
                        if len > self.max_message_size {
                            return Err(Error::stream(format!(
                                "frame of {len} bytes exceeds max_message_size {}",
                                self.max_message_size
                            )));
                        }
                        // Reserved, not touched: pages are only committed as the data arrives.
                        let data = crate::sys::alloc_bytes(len);
                        self.header.clear();
                        self.current = Some((Frame { header, data }, len));
                    }
                }
                Some((msg, len)) => {
                    let take = (*len - msg.data.len()).min(data.len());
                    msg.data.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if msg.data.len() == *len {
                        out.push(self.current.take().expect("current frame").0);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Decode `data` as a sequence of frames with `max_message_size`, as a stream would: the
/// complete frames, or the error that would disconnect the stream (for tests and fuzzing).
///
/// # Errors
/// [`StreamError`](crate::StreamError) on a bad magic or an oversized frame.
pub fn decode_frames(data: &[u8], max_message_size: usize) -> Result<Vec<Frame>> {
    let mut out = Vec::new();
    FrameDecoder::new(max_message_size).feed(data, &mut out)?;
    Ok(out)
}

/// MessagePack-encode `obj` (struct fields by name, so both ends may evolve).
///
/// # Errors
/// [`StreamError`](crate::StreamError) if `obj` cannot be serialized.
pub fn encode<T: Serialize + ?Sized>(obj: &T) -> Result<Vec<u8>> {
    let fail = |e: rmp_serde::encode::Error| Error::stream(format!("cannot encode message data: {e}"));
    // Measure first (cheap: bulk bytes are only counted), so the buffer is allocated once at
    // its final size instead of being copied on every doubling.
    let mut counter = Counter(0);
    rmp_serde::encode::write_named(&mut counter, obj).map_err(fail)?;
    let mut out = crate::sys::alloc_bytes(counter.0);
    rmp_serde::encode::write_named(&mut out, obj).map_err(fail)?;
    Ok(out)
}

/// A writer that only counts.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn decode<T: DeserializeOwned>(data: &[u8]) -> Result<T> {
    rmp_serde::from_slice(data)
        .map_err(|e| Error::stream(format!("cannot decode message data as {}: {e}", std::any::type_name::<T>())))
}

/// Encode a [`CallError`] as a MessagePack `ext 32` value of type [`CALL_ERROR_EXT`]. Values
/// serialized by serde never produce extension types, so the two cannot be confused.
pub(crate) fn encode_call_error(err: &CallError) -> Vec<u8> {
    let inner = rmp_serde::to_vec(err).expect("a CallError always encodes");
    let mut out = Vec::with_capacity(inner.len() + 6);
    out.push(0xc9);
    out.extend_from_slice(&(inner.len() as u32).to_be_bytes());
    out.push(CALL_ERROR_EXT as u8);
    out.extend_from_slice(&inner);
    out
}

pub(crate) fn decode_call_error(data: &[u8]) -> Result<Option<CallError>> {
    if data.len() < 6 || data[0] != 0xc9 || data[5] != CALL_ERROR_EXT as u8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let body = data.get(6..6 + len).ok_or_else(|| Error::stream("truncated CallError in message data"))?;
    decode(body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(handle: u32, data: &[u8]) -> Vec<u8> {
        let h = Header { dst_id: 1, src_id: 2, auth_id: 2, handle, reply_to: 0, len: data.len() };
        let mut v = h.encode().to_vec();
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decoder_reassembles_partial_frames_byte_by_byte() {
        let mut bytes = frame(7, b"hello");
        bytes.extend(frame(8, b""));
        bytes.extend(frame(9, &[1u8; 1000]));
        let mut d = FrameDecoder::new(1 << 20);
        let mut out = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b), &mut out).unwrap();
        }
        let got: Vec<(u32, usize)> = out.iter().map(|f| (f.header.handle, f.data.len())).collect();
        assert_eq!(got, vec![(7, 5), (8, 0), (9, 1000)]);
        assert_eq!(out[0].data, b"hello");
    }

    #[test]
    fn decoder_takes_many_frames_in_one_chunk() {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            bytes.extend(frame(i, &i.to_be_bytes()));
        }
        let mut d = FrameDecoder::new(1 << 20);
        let mut out = Vec::new();
        d.feed(&bytes, &mut out).unwrap();
        assert_eq!(out.len(), 100);
        assert!(out.iter().enumerate().all(|(i, f)| f.header.handle == i as u32 && f.data == (i as u32).to_be_bytes()));
    }

    #[test]
    fn headers_round_trip() {
        let h = Header { dst_id: 1, src_id: 2, auth_id: 3, handle: 4, reply_to: 5, len: 7 };
        let bytes = h.encode();
        assert_eq!(&bytes[..2], b"MI");
        assert_eq!(Header::parse(&bytes).unwrap(), h);
    }

    #[test]
    fn decoder_refuses_oversized_frames_and_bad_magic() {
        let mut d = FrameDecoder::new(10);
        let err = d.feed(&frame(1, &[0; 11]), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("exceeds max_message_size 10"), "{err}");
        let mut d = FrameDecoder::new(10);
        let err = d.feed(&[0xffu8; 40], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
    }
}
