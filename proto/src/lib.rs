//! The NTM protocol, without I/O: wire formats, crypto, and the state machines of registration,
//! direction and tunnel setup. Callers feed it bytes and the current time; it returns bytes to
//! send and things to do.

pub mod cookie;
pub mod data;
pub mod dc;
pub mod dns;
pub mod exchange;
pub mod keys;
pub mod liveness;
pub mod msg;
pub mod netlink;
pub mod node;
pub mod noise;
pub mod registry;
pub mod relay;
pub mod replay;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stats;
pub mod tunnel;
pub mod wire;
