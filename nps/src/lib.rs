//! `nps`, the NTMobile Proxy Server: an HTTP/1.1, HTTP/2 and TLS reverse proxy that lets an
//! ordinary host with only a browser reach an NTM node by its FQDN.
//!
//! The node's DC publishes the NPS's address as the node's A/AAAA records; the NPS tells the
//! target apart by Host (or TLS SNI), resolves that FQDN through the local `ntmd` stub (which
//! builds or reuses the tunnel to the node and answers with the node's VIP), and relays the
//! request to the node's web server over the VIP. Only the FQDNs listed in the configuration
//! are served: it is not an open proxy.
//!
//! It is the public edge, and fails closed: it connects only to addresses in `vip_ranges`
//! (whatever the resolver answers), refuses a request that has been through it already (`Via`),
//! sets the forwarding headers from what it saw, and caps connections (in total, per client,
//! per site), request heads, and idle time.

pub mod accesslog;
pub mod body;
pub mod config;
pub mod errors;
pub mod idle;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod resolve;
pub mod server;
pub mod tls;
pub mod upgrade;

pub use config::Config;
pub use server::{Kind, Server};
