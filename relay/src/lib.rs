//! The NTM Relay Server: forwards sealed tunnel packets between two nodes that cannot reach each
//! other directly (one IPv4-only and one IPv6-only, or both behind NATs that filter), in sessions
//! that only its DCs can open. It never decrypts: it forwards by id, between endpoints it learned
//! from authenticated binds.

pub mod config;
pub mod control;
pub mod server;
pub mod table;
pub mod worker;
