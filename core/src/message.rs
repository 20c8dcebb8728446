//! [`Message`]: the unit of communication, with the router it arrived through, built on the
//! frame and encodings of [`wire`](crate::wire).

use std::cell::RefCell;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{CallError, Error, Result};
use crate::receiver::Receiver;
use crate::router::Router;
use crate::wire::{decode, decode_call_error, encode_call_error, Frame, Header, IS_DEAD};
use crate::wire::{encode, HEADER_LEN};

/// The unit of communication: the header fields, the data, and where it came from
/// (Mitogen `mitogen.core.Message`).
#[derive(Clone, Default)]
pub struct Message {
    /// Target context id; delivered locally when it equals the router's context id.
    pub dst_id: u32,
    /// Source context id, where replies go.
    pub src_id: u32,
    /// The context under whose authority the message acts (see source verification).
    pub auth_id: u32,
    /// Target handle in the destination context.
    pub handle: u32,
    /// Handle replies go to, `0` for none, or [`IS_DEAD`].
    pub reply_to: u32,
    /// Message data: MessagePack-encoded ("pickled") or raw bytes.
    pub data: Vec<u8>,
    /// The router that received this message; `None` for locally originated messages.
    pub router: Option<Router>,
    /// The receiver this message was last received through; set by `Select`.
    pub receiver: Option<Receiver>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Message({} <- {} auth={} handle={} reply_to={} len={}{})",
            self.dst_id,
            self.src_id,
            self.auth_id,
            self.handle,
            self.reply_to,
            self.data.len(),
            if self.is_dead() { " dead" } else { "" }
        )
    }
}

/// What [`Message::unpickle_raw`] found in a message: Mitogen's `unpickle(throw=False)`.
#[derive(Debug)]
pub enum Payload<T> {
    /// An ordinary value.
    Value(T),
    /// The message was dead; the reason it carried.
    Dead(String),
    /// The data held an encoded [`CallError`].
    CallError(CallError),
}

impl Message {
    /// An empty message whose `src_id` and `auth_id` are this process's
    /// [`context_id`](crate::globals::context_id).
    pub fn new() -> Message {
        let id = crate::globals::context_id();
        Message { src_id: id, auth_id: id, ..Message::default() }
    }

    /// A message to `handle` carrying raw `data`.
    pub fn raw(handle: u32, data: Vec<u8>) -> Message {
        Message { handle, data, ..Message::new() }
    }

    /// A message to `handle` carrying `obj`, MessagePack-encoded (Mitogen `Message.pickled`).
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if `obj` cannot be serialized.
    pub fn pickled<T: Serialize + ?Sized>(obj: &T, handle: u32) -> Result<Message> {
        Ok(Message::raw(handle, encode(obj)?))
    }

    /// This message addressed from `router`'s own context to `dst_id`: destination, source and
    /// authority set at once, as a context addresses what it sends of its own accord.
    #[must_use]
    pub fn addressed(mut self, dst_id: u32, router: &Router) -> Message {
        (self.dst_id, self.src_id, self.auth_id) = (dst_id, router.context_id(), router.context_id());
        self
    }

    /// A message carrying an encoded [`CallError`]; [`unpickle`](Message::unpickle) re-raises it.
    pub fn call_error(err: &CallError, handle: u32) -> Message {
        Message::raw(handle, encode_call_error(err))
    }

    /// A dead message (`reply_to` = [`IS_DEAD`]) whose data is `reason`.
    pub fn dead(reason: &str) -> Message {
        Message { reply_to: IS_DEAD, data: reason.as_bytes().to_vec(), ..Message::new() }
    }

    /// Whether `reply_to` is [`IS_DEAD`]: the sender considers the channel dead.
    pub fn is_dead(&self) -> bool {
        self.reply_to == IS_DEAD
    }

    /// The reason carried by a dead message (empty for others).
    pub fn dead_reason(&self) -> String {
        if self.is_dead() {
            String::from_utf8_lossy(&self.data).into_owned()
        } else {
            String::new()
        }
    }

    /// Decode the data as `T`, raising what it carries (Mitogen `unpickle(throw=True)`).
    ///
    /// `Context` and `Sender` values inside are bound to [`router`](Message::router).
    ///
    /// # Errors
    /// [`ChannelError`](crate::ChannelError) with the reason if the message is dead;
    /// the [`CallError`] if the data holds one; [`StreamError`](crate::StreamError) if the data
    /// is not a valid encoding of `T`.
    pub fn unpickle<T: DeserializeOwned>(&self) -> Result<T> {
        match self.unpickle_raw()? {
            Payload::Value(v) => Ok(v),
            Payload::Dead(reason) => Err(Error::channel(reason)),
            Payload::CallError(e) => Err(Error::CallError(e)),
        }
    }

    /// Decode the data without raising dead messages or call errors (Mitogen
    /// `unpickle(throw=False)`).
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the data is not a valid encoding of `T`.
    pub fn unpickle_raw<T: DeserializeOwned>(&self) -> Result<Payload<T>> {
        if self.is_dead() {
            return Ok(Payload::Dead(self.dead_reason()));
        }
        if let Some(e) = decode_call_error(&self.data)? {
            return Ok(Payload::CallError(e));
        }
        with_decode_router(self.router.as_ref(), || decode(&self.data)).map(Payload::Value)
    }

    /// Send a reply carrying `obj` to this message's `src_id` / `reply_to` through `router`, or
    /// through [`self.router`](Message::router) when `router` is `None` (Mitogen `reply`).
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if `obj` cannot be encoded, or no router is known.
    pub fn reply<T: Serialize + ?Sized>(&self, obj: &T, router: Option<&Router>) -> Result<()> {
        self.reply_message(Message::pickled(obj, 0)?, router)
    }

    /// Send `msg` as the reply to this message: its `dst_id` and `handle` are set from this
    /// message's `src_id` and `reply_to`.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if no router is known.
    pub fn reply_message(&self, mut msg: Message, router: Option<&Router>) -> Result<()> {
        let router =
            router.or(self.router.as_ref()).ok_or_else(|| Error::stream("cannot reply: the message has no router"))?;
        msg.dst_id = self.src_id;
        msg.handle = self.reply_to;
        msg.src_id = router.context_id();
        msg.auth_id = router.context_id();
        router.route(msg);
        Ok(())
    }

    /// Encode the 26-byte frame header for this message.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        Header {
            dst_id: self.dst_id,
            src_id: self.src_id,
            auth_id: self.auth_id,
            handle: self.handle,
            reply_to: self.reply_to,
            len: self.data.len(),
        }
        .encode()
    }

    /// Decode a frame header into a message without data, plus the data length it announces.
    ///
    /// # Errors
    /// [`StreamError`](crate::StreamError) if the magic is wrong.
    pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(Message, usize)> {
        let header = Header::parse(h)?;
        Ok((Message::from_frame(Frame { header, data: Vec::new() }), header.len))
    }

    /// The message a decoded frame carries (its data is moved, not copied).
    pub fn from_frame(frame: Frame) -> Message {
        let Frame { header: h, data } = frame;
        Message {
            dst_id: h.dst_id,
            src_id: h.src_id,
            auth_id: h.auth_id,
            handle: h.handle,
            reply_to: h.reply_to,
            data,
            ..Message::default()
        }
    }
}

thread_local! {
    static DECODE_ROUTER: RefCell<Option<Router>> = const { RefCell::new(None) };
}

/// Run `f` with `router` as the one that decoded `Context` and `Sender` values bind to.
pub(crate) fn with_decode_router<R>(router: Option<&Router>, f: impl FnOnce() -> R) -> R {
    let old = DECODE_ROUTER.with(|r| r.replace(router.cloned()));
    let out = f();
    DECODE_ROUTER.with(|r| *r.borrow_mut() = old);
    out
}

/// The router that values being decoded on this thread bind to, if any.
pub(crate) fn decode_router() -> Option<Router> {
    DECODE_ROUTER.with(|r| r.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let m = Message {
            dst_id: 1,
            src_id: 2,
            auth_id: 3,
            handle: 4,
            reply_to: 5,
            data: vec![9; 7],
            ..Message::default()
        };
        let h = m.header();
        assert_eq!(&h[..2], b"MI");
        let (back, len) = Message::parse_header(&h).unwrap();
        assert_eq!((back.dst_id, back.src_id, back.auth_id, back.handle, back.reply_to, len), (1, 2, 3, 4, 5, 7));
    }

    #[test]
    fn bad_magic_is_a_stream_error() {
        let mut h = Message::new().header();
        h[0] = b'X';
        let err = Message::parse_header(&h).unwrap_err();
        assert!(err.is_stream() && err.to_string().contains("bad magic"), "{err}");
    }

    #[test]
    fn pickled_values_unpickle() {
        let m = Message::pickled(&("x", 5u64, vec![1.5f64]), 1).unwrap();
        let v: (String, u64, Vec<f64>) = m.unpickle().unwrap();
        assert_eq!(v, ("x".to_string(), 5, vec![1.5]));
    }

    #[test]
    fn dead_message_raises_channel_error() {
        let m = Message::dead("receiver closed");
        assert!(m.is_dead());
        let err = m.unpickle::<u32>().unwrap_err();
        assert_eq!(err.to_string(), "channel error: receiver closed");
        assert!(matches!(m.unpickle_raw::<u32>().unwrap(), Payload::Dead(r) if r == "receiver closed"));
    }

    #[test]
    fn embedded_call_error_is_raised() {
        let ce = CallError::new("std::io::Error", "disk on fire");
        let m = Message::call_error(&ce, 1);
        assert_eq!(m.unpickle::<u32>().unwrap_err(), Error::CallError(ce.clone()));
        assert!(matches!(m.unpickle_raw::<u32>().unwrap(), Payload::CallError(e) if e == ce));
    }

    #[test]
    fn wrong_type_is_a_stream_error() {
        let m = Message::pickled("text", 1).unwrap();
        let err = m.unpickle::<u64>().unwrap_err();
        assert!(err.is_stream() && err.to_string().contains("u64"), "{err}");
    }
}
