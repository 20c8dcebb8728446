//! The end-to-end suite: one binary, a module per area (see `lib.rs` for the harness).

#[path = "suite/fixtures.rs"]
mod fixtures;

#[path = "suite/broker.rs"]
mod broker;
#[path = "suite/latch.rs"]
mod latch;
#[path = "suite/local.rs"]
mod local;
#[path = "suite/receiver.rs"]
mod receiver;
#[path = "suite/router.rs"]
mod router;
#[path = "suite/select.rs"]
mod select;
#[path = "suite/streams.rs"]
mod streams;
