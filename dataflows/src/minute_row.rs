//! The per-minute rollup row (`city_minutes`): one city's on-time events of one minute, so
//! dashboards read a few thousand small rows instead of scanning `ride_events`.
//!
//! It comes from the same minute buckets as SPEC §3's windows (`city_metrics`), so it is
//! final, versioned and re-emitted after a restart exactly like a window row: a final row is
//! computed from the same records every time, so a replay writes an identical row that
//! collapses in `ReplacingMergeTree(version)`. The minute's distinct riders are carried as
//! the sorted set itself (`riders`), not only as a count: distinct counts do not add up
//! across minutes, but sets do, so "distinct riders in the last hour" stays exact
//! (`uniqExact(arrayJoin(riders))` over 60 rows per city).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::event::Timestamp;

/// One city's on-time events in one minute `[minute, minute + 1 min)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CityMinuteRow {
    /// The minute's start, UTC.
    pub minute: Timestamp,
    /// The city.
    pub city: String,
    /// Events (late events excluded, as in SPEC §3).
    pub events: u64,
    /// `requested` events.
    pub requested: u64,
    /// `accepted` events.
    pub accepted: u64,
    /// `started` events.
    pub started: u64,
    /// `completed` events.
    pub completed: u64,
    /// `cancelled` events.
    pub cancelled: u64,
    /// Sum of the non-null `estimated_fare`s (summed exactly in nanounits, then converted).
    pub fare_sum: f64,
    /// How many events had a fare.
    pub fares: u64,
    /// Distinct `user_id`s of the minute (the length of `riders`).
    pub unique_riders: u64,
    /// The distinct `user_id`s, sorted (so a replay writes the identical row). Inline
    /// strings: a minute row carries thousands, and as `String`s each was a heap
    /// allocation made by the worker and freed by the writer thread (twice, with the
    /// writer's copy for its insert).
    pub riders: Vec<CompactString>,
    /// The largest event time among them (ms since the epoch): what freshness reads.
    pub max_event_ms: i64,
    /// 1 once the watermark has passed the minute's end.
    pub is_final: u8,
    /// Updates carry their event count, the final row `final_version` of it.
    pub version: u64,
    /// When the row was emitted (wall clock).
    pub updated_at: Timestamp,
}
