//! Mitogen for Rust: a program starts copies of itself as child contexts and talks to them.
//!
//! This facade re-exports the workspace crates under the module paths Python's Mitogen
//! documents: [`core`] (`mitogen.core`), [`select`] (`mitogen.select`), [`parent`]
//! (`mitogen.parent`), [`master`] (`mitogen.master`) and [`utils`] (`mitogen.utils`).
//!
//! ```
//! use std::time::Duration;
//! use mitogen::core::Receiver;
//! use mitogen::select::Select;
//!
//! mitogen::utils::run_with_router(|router| {
//!     let recv = Receiver::new(router)?;
//!     recv.to_sender().send("hello")?;
//!     let msg = Select::new([&recv], true)?.get_timeout(Duration::from_secs(5))?;
//!     assert_eq!(msg.unpickle::<String>()?, "hello");
//!     assert_eq!(msg.receiver, Some(recv));
//!     Ok(())
//! })
//! .unwrap();
//! ```
#![deny(missing_docs)]

pub use mitogen_core as core;
pub use mitogen_master as master;
pub use mitogen_parent as parent;
pub use mitogen_select as select;
pub use mitogen_utils as utils;

pub use mitogen_core::globals::{context_id, is_master, parent_id, parent_ids};
pub use mitogen_core::{CallError, ChannelError, Error, LatchError, StreamError, TimeoutError};
