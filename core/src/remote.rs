//! Remote functions: the link-time registry, the typed call trait, and the call wire format.
//!
//! A function becomes callable in other contexts with [`remote!`](crate::remote): it stays an
//! ordinary function, and an entry naming it is added to a table the linker builds
//! ([`linkme`]). On the wire a function is its full path, as [`std::any::type_name`] spells the
//! function item's type (`my_crate::module::function`); parent and child run the same
//! executable, so both compute the same path. A child looks the path up in its table: an unknown
//! path is a [`CallError`] naming it, and no code pointer is ever built from bytes off the wire.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::CallError;
use crate::wire::encode;

/// A registered function's trampoline: encoded arguments in, encoded outcome out.
#[doc(hidden)]
pub type Invoke = fn(&[u8]) -> Result<Vec<u8>, CallError>;

/// One remote function, as registered by [`remote!`](crate::remote).
#[doc(hidden)]
pub struct RemoteEntry {
    /// The function's path (computed, since `type_name` is not `const`).
    pub name: fn() -> &'static str,
    /// Decode the arguments, call the function, encode its outcome.
    pub invoke: Invoke,
}

/// The link-time table of every function marked with [`remote!`](crate::remote).
#[doc(hidden)]
#[linkme::distributed_slice]
pub static REMOTE_FUNCTIONS: [RemoteEntry];

/// The path a function item crosses the wire as.
#[doc(hidden)]
pub fn name_of<F>(_: F) -> &'static str {
    std::any::type_name::<F>()
}

/// The table of registered functions by path, built on first use.
fn table() -> &'static HashMap<&'static str, Invoke> {
    static TABLE: OnceLock<HashMap<&'static str, Invoke>> = OnceLock::new();
    TABLE.get_or_init(|| REMOTE_FUNCTIONS.iter().map(|e| ((e.name)(), e.invoke)).collect())
}

/// What identifies this program across its builds: the sha256 (16 hex digits) of the sorted
/// paths of its remote functions. A build of the same program for another target (musl,
/// aarch64) has the same; another program, or another version with other functions, does
/// not. A child reports it in its `Hello`, and a parent refuses a child whose differs.
#[doc(hidden)]
pub fn program_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        use sha2::Digest;
        let mut names: Vec<&str> = REMOTE_FUNCTIONS.iter().map(|e| (e.name)()).collect();
        names.sort_unstable();
        let digest = sha2::Sha256::digest(names.join("\n").as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    })
}

/// Build the table now (before a `fork`, so no other thread is half way through building it
/// at that instant: a `OnceLock` left mid-initialisation would block the child for ever).
pub(crate) fn build_table() {
    table();
    program_id();
}

/// Look up a registered function by its path.
pub(crate) fn lookup(path: &str) -> Option<Invoke> {
    table().get(path).copied()
}

/// What a remote function may return: a plain value, or a `Result` whose `Err` becomes a
/// [`CallError`] carrying the error's type and message.
///
/// Implemented for `Result<T, E>` (with `E: Display`) and for common value types. For a type of
/// your own, return `Result<MyType, E>`, or implement this trait with
/// [`returns!`](crate::returns).
pub trait Returns {
    /// The value the caller receives.
    type Ok: Serialize + DeserializeOwned;
    /// Split into the value or the error to raise in the caller.
    ///
    /// # Errors
    /// The function's error, as a [`CallError`].
    fn into_outcome(self) -> Result<Self::Ok, CallError>;
}

impl<T: Serialize + DeserializeOwned, E: Display> Returns for Result<T, E> {
    type Ok = T;

    fn into_outcome(self) -> Result<T, CallError> {
        self.map_err(|e| CallError::new(std::any::type_name::<E>(), e.to_string()))
    }
}

/// Implement [`Returns`] for value types returned as they are (no error case).
#[macro_export]
macro_rules! returns {
    ($($t:ty),* $(,)?) => {$(
        impl $crate::Returns for $t {
            type Ok = $t;
            fn into_outcome(self) -> ::std::result::Result<$t, $crate::CallError> {
                Ok(self)
            }
        }
    )*};
}

returns!((), bool, char, u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, String);
returns!(crate::Blob, crate::Context, crate::Sender);

impl<T: Serialize + DeserializeOwned> Returns for Vec<T> {
    type Ok = Vec<T>;
    fn into_outcome(self) -> Result<Vec<T>, CallError> {
        Ok(self)
    }
}

/// Shared data is sent without copying it first: return `Arc<Blob>` from a cache.
impl<T: Serialize + DeserializeOwned> Returns for std::sync::Arc<T> {
    type Ok = std::sync::Arc<T>;
    fn into_outcome(self) -> Result<std::sync::Arc<T>, CallError> {
        Ok(self)
    }
}

impl<T: Serialize + DeserializeOwned> Returns for Option<T> {
    type Ok = Option<T>;
    fn into_outcome(self) -> Result<Option<T>, CallError> {
        Ok(self)
    }
}

impl<K, V> Returns for HashMap<K, V>
where
    K: Serialize + DeserializeOwned + std::hash::Hash + Eq,
    V: Serialize + DeserializeOwned,
{
    type Ok = HashMap<K, V>;
    fn into_outcome(self) -> Result<HashMap<K, V>, CallError> {
        Ok(self)
    }
}

macro_rules! tuple_returns {
    ($($name:ident),+) => {
        impl<$($name: Serialize + DeserializeOwned),+> Returns for ($($name,)+) {
            type Ok = ($($name,)+);
            fn into_outcome(self) -> Result<Self::Ok, CallError> {
                Ok(self)
            }
        }
    };
}
tuple_returns!(A);
tuple_returns!(A, B);
tuple_returns!(A, B, C);
tuple_returns!(A, B, C, D);
tuple_returns!(A, B, C, D, E);
tuple_returns!(A, B, C, D, E, G);

/// A function callable in another context with arguments `Args` (a tuple).
///
/// Implemented for every `Fn(A, B, ...) -> R` whose arguments are serializable and whose `R` is
/// [`Returns`], up to 8 arguments: `ctx.call(f, (a, b))` is checked against `f`'s signature at
/// compile time. Pass `()` for no arguments and `(x,)` for one.
pub trait RemoteFn<Args>: Copy + Send + 'static {
    /// The function's return type.
    type Output: Returns;
    /// Call the function locally.
    fn invoke(self, args: Args) -> Self::Output;
}

macro_rules! remote_fn {
    ($($arg:ident),*) => {
        impl<Func, Ret, $($arg),*> RemoteFn<($($arg,)*)> for Func
        where
            Func: Fn($($arg),*) -> Ret + Copy + Send + 'static,
            Ret: Returns,
            $($arg: Serialize + DeserializeOwned,)*
        {
            type Output = Ret;
            #[allow(non_snake_case)]
            fn invoke(self, ($($arg,)*): ($($arg,)*)) -> Ret {
                self($($arg),*)
            }
        }
    };
}
remote_fn!();
remote_fn!(A1);
remote_fn!(A1, A2);
remote_fn!(A1, A2, A3);
remote_fn!(A1, A2, A3, A4);
remote_fn!(A1, A2, A3, A4, A5);
remote_fn!(A1, A2, A3, A4, A5, A6);
remote_fn!(A1, A2, A3, A4, A5, A6, A7);
remote_fn!(A1, A2, A3, A4, A5, A6, A7, A8);

/// The registry's trampoline: decode `Args`, call `f`, encode the outcome.
#[doc(hidden)]
pub fn invoke_remote<F, Args>(f: F, args: &[u8]) -> Result<Vec<u8>, CallError>
where
    F: RemoteFn<Args>,
    Args: DeserializeOwned,
{
    let args: Args = rmp_serde::from_slice(args).map_err(|e| {
        CallError::new("mitogen::StreamError", format!("cannot decode arguments of {}: {e}", name_of(f)))
    })?;
    let value = f.invoke(args).into_outcome()?;
    encode(&value).map_err(|e| CallError::new("mitogen::StreamError", e.to_string()))
}

/// Mark free functions as callable in other contexts. Each stays an ordinary function.
///
/// ```
/// fn add(a: u32, b: u32) -> u32 {
///     a + b
/// }
/// fn read_config(path: String) -> std::io::Result<String> {
///     std::fs::read_to_string(path)
/// }
/// mitogen_core::remote!(add, read_config);
/// assert_eq!(add(1, 2), 3);
/// ```
#[macro_export]
macro_rules! remote {
    ($($f:path),+ $(,)?) => {$(
        const _: () = {
            #[$crate::__private::linkme::distributed_slice($crate::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = $crate::__private::linkme)]
            static ENTRY: $crate::__private::RemoteEntry = $crate::__private::RemoteEntry {
                name: || $crate::__private::name_of($f),
                invoke: |args| $crate::__private::invoke_remote($f, args),
            };
        };
    )+};
}

/// A decoded `CALL_FUNCTION` request. On the wire it is the MessagePack pair
/// `(chain_id, path)` immediately followed by the MessagePack argument tuple, so bulk arguments
/// are encoded once and decoded straight from the message, never copied into a nested buffer.
#[derive(Debug)]
pub(crate) struct CallRequest<'a> {
    /// Pipelined chain this call belongs to; a failure in the chain is sticky for it.
    pub(crate) chain_id: Option<String>,
    /// The function's path.
    pub(crate) path: String,
    /// The encoded argument tuple.
    pub(crate) args: &'a [u8],
}

impl<'a> CallRequest<'a> {
    /// Split a `CALL_FUNCTION` message's data.
    pub(crate) fn decode(data: &'a [u8]) -> crate::Result<CallRequest<'a>> {
        let mut de = rmp_serde::Deserializer::new(data);
        let (chain_id, path): (Option<String>, String) = Deserialize::deserialize(&mut de)
            .map_err(|e| crate::Error::stream(format!("bad CALL_FUNCTION request: {e}")))?;
        Ok(CallRequest { chain_id, path, args: de.into_inner() })
    }
}

/// Build the data of a `CALL_FUNCTION` message calling `f` with `args` in chain `chain_id`.
///
/// # Errors
/// [`StreamError`](crate::StreamError) if the arguments cannot be encoded.
pub fn encode_call<F: RemoteFn<Args>, Args: Serialize>(
    f: F,
    args: &Args,
    chain_id: Option<&str>,
) -> crate::Result<Vec<u8>> {
    encode_call_by_path(name_of(f), args, chain_id)
}

/// Build a `CALL_FUNCTION` request for a function known only by path (used by tests of unknown
/// paths).
///
/// # Errors
/// [`StreamError`](crate::StreamError) if the arguments cannot be encoded.
#[doc(hidden)]
pub fn encode_call_by_path<Args: Serialize>(path: &str, args: &Args, chain_id: Option<&str>) -> crate::Result<Vec<u8>> {
    let mut out = encode(&(chain_id, path))?;
    rmp_serde::encode::write_named(&mut out, args)
        .map_err(|e| crate::Error::stream(format!("cannot encode arguments of {path}: {e}")))?;
    Ok(out)
}
