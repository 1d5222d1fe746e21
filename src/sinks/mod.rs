//! The job's sinks: operators that hand data to the [`Writer`](crate::clickhouse::writer::Writer)
//! and report back, through timely's own progress tracking, how far it is durable.
//!
//! - [`durable`]: the shared operator shape. It batches its input per frontier step (and by
//!   size and age, for freshness), submits each batch, and *holds a capability* at the
//!   batch's earliest time until the writer confirms it. Its (empty) output therefore has a
//!   frontier that is the durable frontier: a probe on it, across every worker and process,
//!   tells the source which event minutes are safely written — Materialize's resume
//!   frontier, in timely terms.
//! - [`ingest`]: raw events to `ride_events`, dead letters to the dead-letter topic; also
//!   records per partition the offset below which every message is durable.
//! - [`metrics`]: metric rows to `city_metrics` and `analytics-aggregated`.
//! - [`supply`]: supply rows to `city_supply` and `city-supply`.
//! - [`minutes`]: per-minute rollup rows to `city_minutes` (what the dashboards read).
//!
//! The source (`kafka::source`) turns both signals into checkpoints and offset commits.

pub mod durable;
pub mod ingest;
pub mod metrics;
pub mod minutes;
pub mod supply;
