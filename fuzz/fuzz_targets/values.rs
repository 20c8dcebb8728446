//! Every wire type a peer can send, decoded from arbitrary bytes: the child's config and
//! handshake, call requests and their arguments, call errors, log records, route and id
//! messages, `Context` and `Sender` values (bound to a live router), and `via=` requests and
//! answers. Decoding may fail with an error; it must never panic or allocate without bound.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mitogen_core::{Blob, Broker, CallError, ChildConfig, Context, Hello, LogRecord, Message, Payload, Router, Sender};
use mitogen_parent::{ViaOutcome, ViaRequest};

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| Router::new(&Broker::new().expect("broker")))
}

fn decode_all(msg: &Message) {
    let _ = msg.unpickle::<ChildConfig>();
    let _ = msg.unpickle::<Hello>();
    let _ = msg.unpickle::<LogRecord>();
    let _ = msg.unpickle::<(u32, String)>(); // ADD_ROUTE
    let _ = msg.unpickle::<u32>(); // DEL_ROUTE
    let _ = msg.unpickle::<(u32, u32)>(); // an ALLOCATE_ID answer
    let _ = msg.unpickle::<Context>();
    let _ = msg.unpickle::<Sender>();
    let _ = msg.unpickle::<(Sender, Context, Blob)>();
    let _ = msg.unpickle::<ViaRequest>();
    let _ = msg.unpickle::<ViaOutcome>();
    let _ = msg.unpickle::<CallError>();
    if let Ok(Payload::CallError(e)) = msg.unpickle_raw::<()>() {
        let _ = e.to_string();
    }
}

fuzz_target!(|data: &[u8]| {
    let msg = Message { data: data.to_vec(), router: Some(router().clone()), ..Message::default() };
    decode_all(&msg);
    if let Ok((_chain, _path, args)) = mitogen_core::__private::split_call_request(data) {
        let args = Message { data: args.to_vec(), router: Some(router().clone()), ..Message::default() };
        let _ = args.unpickle::<(Sender, u32)>();
        let _ = args.unpickle::<(String, Vec<u8>, Option<Context>)>();
    }
});
