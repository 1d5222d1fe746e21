//! `ridepulse dashboard`: the live picture without Grafana, served by the binary itself.
//!
//! A page (HTML, CSS and JavaScript compiled into the binary, the chart library uPlot
//! included: vendored from the npm registry by `scripts/vendor-uplot`, so no CDN and no
//! network at run time) polls `/api/snapshot` every two seconds and redraws in place. The
//! snapshot (`queries.rs`) holds the same panels as the Grafana dashboard: pipeline
//! freshness, the city table of the last hour, ride requests per minute, cancellation and
//! completion rates with the alert threshold, average fare, unique riders, late events and
//! dead letters, and supply and demand (SPEC §5: where riders wait now, the cities under
//! pressure first; available drivers, waiting riders and pressure per city over time, the
//! pressure threshold drawn). Next to freshness: consumer lag and watermark delay, read
//! from the job processes' `/metrics` (see `metrics::scrape`). When ClickHouse does not
//! answer, the API says so (HTTP 503 with the reason) and the page keeps its last numbers
//! under a visible notice. The charts show a hovered point's values in their legend, hide
//! and show a city when its legend entry is clicked (on every chart at once), draw the five
//! busiest cities of the last hour by default, and say on the time axis whether a point is
//! a window's end, a minute's start or a minute's end state.
//!
//! The HTTP server is `tiny_http` on a few threads: the page is for a handful of viewers, and
//! each request is one round of ClickHouse queries.

pub mod queries;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::config::Config;
use queries::{snapshot, SnapshotRequest};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
/// uPlot, the chart library, vendored from the npm registry by `scripts/vendor-uplot`.
const UPLOT_JS: &str = include_str!("assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/vendor/uplot/uPlot.min.css");
/// Request-handling threads (each request waits on ClickHouse, so more than one).
const THREADS: usize = 4;
/// How long one snapshot may take before the page is told ClickHouse is not answering.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(8);

/// How the dashboard serves.
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    /// `host:port` to listen on.
    pub listen: String,
    /// Minutes of history in the charts.
    pub minutes: u32,
    /// Cancellation rate (%) above which a city is highlighted.
    pub threshold_pct: f64,
    /// Pressure (waiting riders per available driver) above which a city is highlighted.
    pub pressure_threshold: f64,
}

/// Serves until the process is stopped. Fails only if the address cannot be bound.
pub fn serve(config: &Config, options: &DashboardOptions) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(&options.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))
        .context("starting the dashboard")?;
    let server = Arc::new(server);
    info!(listen = %options.listen, database = %config.clickhouse.database, "dashboard serving");
    println!("dashboard: http://{}/", options.listen);
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let server = server.clone();
        let config = config.clone();
        let options = options.clone();
        threads.push(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime can always be built");
            let client = crate::clickhouse::connect(&config.clickhouse);
            for request in server.incoming_requests() {
                let response = runtime.block_on(respond(&client, &config, &options, &request));
                if let Err(error) = request.respond(response) {
                    warn!(%error, "could not send a dashboard response");
                }
            }
        }));
    }
    for thread in threads {
        let _ = thread.join();
    }
    Ok(())
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn with_type(body: impl Into<Vec<u8>>, status: u16, content_type: &str) -> Response {
    tiny_http::Response::from_data(body.into())
        .with_status_code(status)
        .with_header(
            tiny_http::Header::from_bytes("Content-Type", content_type).expect("valid header"),
        )
        .with_header(tiny_http::Header::from_bytes("Cache-Control", "no-store").expect("valid"))
}

async fn respond(
    client: &clickhouse::Client,
    config: &Config,
    options: &DashboardOptions,
    request: &tiny_http::Request,
) -> Response {
    let path = request.url().split('?').next().unwrap_or("/");
    match path {
        "/" | "/index.html" => with_type(INDEX_HTML, 200, "text/html; charset=utf-8"),
        "/app.js" => with_type(APP_JS, 200, "text/javascript; charset=utf-8"),
        "/style.css" => with_type(STYLE_CSS, 200, "text/css; charset=utf-8"),
        "/vendor/uplot/uPlot.iife.min.js" => {
            with_type(UPLOT_JS, 200, "text/javascript; charset=utf-8")
        }
        "/vendor/uplot/uPlot.min.css" => with_type(UPLOT_CSS, 200, "text/css; charset=utf-8"),
        "/api/snapshot" => {
            let wanted = SnapshotRequest {
                minutes: options.minutes,
                threshold_pct: options.threshold_pct,
                pressure_threshold: options.pressure_threshold,
            };
            let result = tokio::time::timeout(
                SNAPSHOT_TIMEOUT,
                snapshot(client, &config.clickhouse.url, &wanted),
            )
            .await;
            let (status, body) = match result {
                Ok(Ok(mut value)) => {
                    value["pipeline"] = pipeline(config);
                    (200, value)
                }
                Ok(Err(error)) => (503, unavailable(error.to_string())),
                Err(_) => (
                    503,
                    unavailable(format!(
                        "ClickHouse at {} did not answer within {} s",
                        config.clickhouse.url,
                        SNAPSHOT_TIMEOUT.as_secs()
                    )),
                ),
            };
            with_type(body.to_string(), status, "application/json")
        }
        _ => with_type("not found\n", 404, "text/plain; charset=utf-8"),
    }
}

/// Lag and watermark delay from the job processes' `/metrics` (the numbers Prometheus
/// scrapes), shown next to freshness; `null`s when no process answers.
fn pipeline(config: &Config) -> serde_json::Value {
    let targets = crate::metrics::scrape::local_targets(config);
    let health = crate::metrics::scrape::health(&targets, Duration::from_millis(300));
    serde_json::json!({
        "lag_messages": health.lag,
        "watermark_delay_seconds": health.watermark_delay_seconds,
        "processes": health.answered,
    })
}

fn unavailable(error: String) -> serde_json::Value {
    warn!(%error, "dashboard snapshot failed");
    serde_json::json!({ "ok": false, "error": error })
}
