//! `/metrics` over HTTP: Prometheus scrapes every job process here.
//!
//! tiny_http (already the built-in dashboard's server) on one thread: a scrape is a few
//! dozen atomics encoded as OpenMetrics text, and Prometheus scrapes every few seconds.
//! The endpoint is best effort: a job whose address is taken (another process, a test
//! running beside it) logs a warning and runs on without one — results matter more than
//! the metrics about them.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// OpenMetrics text, which Prometheus 2.x negotiates and prefers.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The running endpoint; it serves until the process exits.
pub struct MetricsServer {
    /// The address it listens on (the port is the real one when 0 was asked for).
    pub address: String,
}

/// Serves `registry` on `address` (`host:port`) from a thread of its own. Returns `None`
/// (and logs why) when the address cannot be bound.
pub fn serve(address: &str, registry: Registry) -> Option<MetricsServer> {
    let server = match tiny_http::Server::http(address) {
        Ok(server) => server,
        Err(error) => {
            warn!(address, %error, "cannot serve /metrics (config key metrics.listen, or the layout's `metrics` address); the job runs without it");
            return None;
        }
    };
    let bound = server
        .server_addr()
        .to_ip()
        .map_or_else(|| address.to_string(), |a| a.to_string());
    info!(address = %bound, "serving /metrics");
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("ridepulse-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("/");
                let response = if path == "/metrics" {
                    let mut body = String::new();
                    match encode(&mut body, &registry) {
                        Ok(()) => text(body, 200, CONTENT_TYPE),
                        Err(_) => text("cannot encode the metrics\n".into(), 500, "text/plain"),
                    }
                } else {
                    text("not found: try /metrics\n".into(), 404, "text/plain")
                };
                if let Err(error) = request.respond(response) {
                    warn!(%error, "could not send a /metrics response");
                }
            }
        })
        .expect("the metrics thread can be spawned");
    Some(MetricsServer { address: bound })
}

fn text(
    body: String,
    status: u16,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_data(body.into_bytes())
        .with_status_code(status)
        .with_header(
            tiny_http::Header::from_bytes("Content-Type", content_type).expect("valid header"),
        )
}
