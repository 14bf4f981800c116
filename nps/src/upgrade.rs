//! HTTP/1.1 Upgrade (WebSocket) pass-through: the request goes to the node with its `Connection:
//! upgrade` and `Upgrade` headers; when the node answers `101 Switching Protocols`, both sides
//! are upgraded by hyper and the bytes are copied both ways until either side closes, or nothing
//! moves for `tunnel_idle_timeout_ms`.

use std::sync::atomic::Ordering;

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::idle::{relay, End};
use crate::proxy::Shared;
use crate::server::DrainToken;

/// Does this request ask for a protocol upgrade the node should see (HTTP/1.1 `Connection:
/// upgrade` + `Upgrade`)? An `Upgrade: h2c` alone is not: it is addressed to this proxy, which
/// declines it by ignoring it (clients then carry on over HTTP/1.1, or use h2c prior knowledge).
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && has_token(req.headers(), CONNECTION, "upgrade")
        && req
            .headers()
            .get_all(UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| !p.trim().is_empty() && !p.trim().eq_ignore_ascii_case("h2c"))
}

/// Is `token` in the comma-separated values of header `name` (case-insensitive)?
pub fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Once both sides have switched protocols, relays the bytes between them in a task of its own,
/// until either side closes or nothing moves for `tunnel_idle_timeout_ms`. `keep` (the slots of
/// the client connection and of the site) is held as long as the tunnel.
pub fn spawn_tunnel(
    client: OnUpgrade,
    node: OnUpgrade,
    site: String,
    shared: &Shared,
    keep: impl Send + 'static,
    drain: DrainToken,
) {
    let metrics = shared.metrics.clone();
    let idle = shared.config.tunnel_idle_timeout;
    metrics.upgrades.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _drain = drain;
        let _keep = keep;
        let (client, node) = match tokio::try_join!(client, node) {
            Ok(both) => both,
            Err(e) => {
                tracing::info!(site, "upgrade failed: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut node = TokioIo::new(node);
        let r = relay(&mut client, &mut node, idle).await;
        metrics.upgraded_bytes_in.fetch_add(r.a_to_b, Ordering::Relaxed);
        metrics.upgraded_bytes_out.fetch_add(r.b_to_a, Ordering::Relaxed);
        match r.end {
            End::Closed => tracing::debug!(site, up = r.a_to_b, down = r.b_to_a, "upgraded connection closed"),
            End::Idle => {
                metrics.idle_closed_tunnels.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(site, "upgraded connection idle for {idle:?}: closed");
            }
            End::Failed(e) => tracing::debug!(site, "upgraded connection ended: {e}"),
        }
    });
}
