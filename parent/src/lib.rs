//! Creating and talking to child contexts (Python's `mitogen.parent` and the connection
//! methods).
//!
//! This crate is where child creation, the bootstrap and the parent `Context` with `CallChain`
//! live; it is being built on the messaging core, issue by issue.
#![deny(missing_docs)]
