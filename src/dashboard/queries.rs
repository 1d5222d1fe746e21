//! The built-in dashboard's queries: the same panels as the Grafana dashboard, as one JSON
//! snapshot the page polls. Every query that takes a value binds it (`?`, escaped by the
//! clickhouse crate), and they run on 18.16 and on modern servers alike.
//!
//! None of them scans `ride_events`: they read the job's small tables (`city_minutes`,
//! `city_metrics`, `city_supply`), the late-event rollup `city_minute_late` and the (small)
//! `dead_letters`, each over a primary-key range of recent minutes, so their cost does not
//! grow with the raw history. The snapshot sends all of them at once and waits for the
//! slowest, not for their sum.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use serde_json::{json, Value};

use crate::clickhouse::ClickHouseError;

/// What the page shows; see [`snapshot`].
pub struct SnapshotRequest {
    /// How many minutes of history the charts show.
    pub minutes: u32,
    /// The cancellation rate (%) above which a city is highlighted.
    pub threshold_pct: f64,
    /// The pressure (waiting riders per available driver) above which a city is
    /// highlighted in the supply-and-demand section.
    pub pressure_threshold: f64,
}

/// `sql/city_performance_last_hour.sql`, the table of the page and of the Grafana dashboard.
pub const CITY_PERFORMANCE_SQL: &str = include_str!("../../sql/city_performance_last_hour.sql");

/// `sql/where_riders_wait_now.sql`: the latest minute of every city from `city_supply`, the
/// cities under pressure first (SPEC §5).
pub const WHERE_RIDERS_WAIT_SQL: &str = include_str!("../../sql/where_riders_wait_now.sql");

/// Supply and demand per city and minute (SPEC §5) for the charts.
pub const SUPPLY_SQL: &str = "
SELECT toUInt32(minute) AS minute, city, available_drivers, on_trip_drivers, waiting_riders,
       rides_in_progress, requests, pressure, is_final
FROM city_supply FINAL
WHERE minute >= now() - ?
ORDER BY minute, city";

/// Now minus the newest event time in ClickHouse, from the rollup rows of the last day (a
/// primary-key range of a few thousand rows; every version of a minute's row counts, since
/// a later version only adds events). Older than a day reads as "no events".
const FRESHNESS_SQL: &str = "
SELECT max(max_event_ms) AS newest_ms, toUInt64(now()) * 1000 AS server_now_ms, count() AS events
FROM city_minutes
WHERE minute >= now() - INTERVAL 1 DAY";

const REQUESTS_SQL: &str = "
SELECT toUInt32(minute) AS minute, city, requested AS requests
FROM city_minutes FINAL
WHERE minute >= now() - ?
ORDER BY minute, city";

/// The window rows ending in the history; the bound on `window_start` (windows are at most
/// an hour long) is what lets the primary key `(city, window_start)` skip the rest.
const WINDOWS_SQL: &str = "
SELECT toUInt32(window_end) AS window_end, city, total_events, requests, completions, cancellations,
       avg_fare, unique_riders, is_final
FROM city_metrics FINAL
WHERE window_end >= now() - ? AND window_start > now() - ? - 3600
ORDER BY window_end, city";

/// Late events per minute of their event time (`city_minute_late`: sets of positions, so a
/// re-delivery counts once) and dead letters per minute of arrival (distinct positions, so
/// no `FINAL` is needed; they have no trustworthy city or event time).
const LATE_DEAD_SQL: &str = "
SELECT minute, sum(late) AS late_events, sum(dead) AS dead_letters
FROM (
    SELECT toUInt32(minute) AS minute, uniqExactMerge(late_events) AS late, toUInt64(0) AS dead
    FROM city_minute_late
    WHERE minute >= now() - ?
    GROUP BY minute
    UNION ALL
    SELECT toUInt32(toStartOfMinute(received_at)) AS minute, toUInt64(0) AS late,
           uniqExact(source_topic, kafka_partition, kafka_offset) AS dead
    FROM dead_letters
    WHERE received_at >= now() - ?
    GROUP BY minute
)
GROUP BY minute
ORDER BY minute";

/// Runs one query and returns its rows as JSON objects.
async fn rows(
    url: &str,
    what: &str,
    query: clickhouse::query::Query,
) -> Result<Vec<Value>, ClickHouseError> {
    let mut cursor = query
        // numbers as JSON numbers, not strings (18.16 quotes 64-bit integers by default).
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .map_err(|e| ClickHouseError::from_client(url, what, e))?;
    let bytes = cursor
        .collect()
        .await
        .map_err(|e| ClickHouseError::from_client(url, what, e))?;
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| ClickHouseError::Server {
                what: what.to_string(),
                detail: format!("unreadable row {l:?}: {e}"),
                severity: crate::clickhouse::Severity::Fatal,
            })
        })
        .collect()
}

/// A query in flight.
type Pending<'a> = Pin<Box<dyn Future<Output = Result<Vec<Value>, ClickHouseError>> + 'a>>;

/// Runs every query at once (each on its own HTTP request) and returns their results in
/// order once all have answered; the first error wins.
async fn all(mut pending: Vec<Pending<'_>>) -> Result<Vec<Vec<Value>>, ClickHouseError> {
    let mut done: Vec<Option<Vec<Value>>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, future) in done.iter_mut().zip(pending.iter_mut()) {
            if slot.is_none() {
                if let Poll::Ready(result) = future.as_mut().poll(cx) {
                    *slot = Some(result?);
                }
            }
        }
        if done.iter().all(Option::is_some) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    Ok(done.into_iter().flatten().collect())
}

/// Everything the page shows, from ClickHouse, as of now.
pub async fn snapshot(
    client: &clickhouse::Client,
    url: &str,
    request: &SnapshotRequest,
) -> Result<Value, ClickHouseError> {
    let history = request.minutes.max(1) * 60;
    let results = all(vec![
        Box::pin(rows(
            url,
            "the freshness query",
            client.query(FRESHNESS_SQL),
        )),
        Box::pin(rows(
            url,
            "the city performance query",
            client.query(CITY_PERFORMANCE_SQL.trim().trim_end_matches(';')),
        )),
        Box::pin(rows(
            url,
            "the requests query",
            client.query(REQUESTS_SQL).bind(history),
        )),
        Box::pin(rows(
            url,
            "the windows query",
            client.query(WINDOWS_SQL).bind(history).bind(history),
        )),
        Box::pin(rows(
            url,
            "the late and dead-letter query",
            client.query(LATE_DEAD_SQL).bind(history).bind(history),
        )),
        Box::pin(rows(
            url,
            "the where-riders-wait query",
            client.query(WHERE_RIDERS_WAIT_SQL.trim().trim_end_matches(';')),
        )),
        Box::pin(rows(
            url,
            "the supply query",
            client.query(SUPPLY_SQL).bind(history),
        )),
    ])
    .await?;
    let [freshness, cities, requests, windows, late_dead, supply_now, supply]: [Vec<Value>; 7] =
        results.try_into().expect("seven queries, seven results");
    let f = freshness.first().cloned().unwrap_or(Value::Null);
    let events = f["events"].as_u64().unwrap_or(0);
    let newest_ms = f["newest_ms"].as_i64().filter(|_| events > 0);
    let server_now_ms = f["server_now_ms"].as_i64().unwrap_or(0);
    Ok(json!({
        "ok": true,
        "threshold_pct": request.threshold_pct,
        "minutes": request.minutes,
        "newest_event_ms": newest_ms,
        "server_now_ms": server_now_ms,
        "freshness_seconds": newest_ms.map(|n| (server_now_ms - n) as f64 / 1000.0),
        "cities": cities,
        "requests_per_minute": requests,
        "windows": windows,
        "late_dead": late_dead,
        "pressure_threshold": request.pressure_threshold,
        "supply_now": supply_now,
        "supply": supply,
    }))
}
