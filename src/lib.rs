//! ridepulse: ride-sharing events from Kafka to live city metrics in ClickHouse, computed by
//! a timely dataflow job.
//!
//! ```text
//! ride service ──► Kafka ──► timely/differential job ──► ClickHouse ──► dashboards
//!  (simulator)     ride-events 12p        (workers)     city_metrics, city_supply,
//!                  driver-locations 24p                 ride_events
//!                  analytics-aggregated 6p, city-supply 6p ◄── results also go back to Kafka
//! ```
//!
//! A tour of this package (the pure dataflows and the event contract are in the
//! `ridepulse-dataflows` crate, imported as `dataflows`):
//! - [`config`]: layered configuration (defaults → file → environment → flags) whose
//!   errors name the key.
//! - [`kafka`]: client settings with their reasons, topic admin, a delivery-counting
//!   producer, a plain backlog consumer, and the source operator that drives the dataflow.
//! - [`clickhouse`]: SPEC §4's schema per server version (`ridepulse migrate`), row types,
//!   and the writer thread that makes every write durable, with retries.
//! - [`sinks`]: the sink operators (ClickHouse + Kafka) that report durability back to the
//!   source, which commits offsets behind it.
//! - [`pipeline`]: `ridepulse run`, one process of a running job (both topics' sources →
//!   the city-metrics and supply dataflows → sinks).
//! - [`cluster`]: the layout (`workers.toml`) and timely's cluster configuration from it.
//! - [`jobs`]: `ridepulse job submit|list|logs|stop`, jobs per city set with a supervisor
//!   that restarts them from their checkpoints.
//! - [`source`]: what both sources share (records, stamping, checkpointing, counters), and
//!   the file source, `run --from-file`: the same job over JSON-lines files.
//! - [`bench`]: `ridepulse bench`, the benchmark harness (JSON results, PNG plots).
//! - [`dashboard`]: `ridepulse dashboard`, the live page served by the binary.
//! - [`metrics`]: every job process's Prometheus `/metrics` (lag, watermark delay, late
//!   events, dead letters, the writer's health), read from the job's counters at scrape.
//! - [`simulator`]: a deterministic ride service that produces realistic event streams.
//! - [`telemetry`]: logging set-up, once, in `main`.
#![deny(missing_docs)]

pub mod bench;
pub mod clickhouse;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod jobs;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod simulator;
pub mod sinks;
pub mod source;
pub mod telemetry;
