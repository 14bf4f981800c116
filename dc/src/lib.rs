//! The Direction Coordinator: configuration, node registry, authoritative DNS, and finding
//! other zones' DCs.

pub mod config;
pub mod dns;
pub mod locate;
pub mod registry;
pub mod rrl;
pub mod server;
