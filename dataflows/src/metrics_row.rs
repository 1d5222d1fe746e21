//! The output contract of SPEC §4: one row of rolling city metrics, as it goes to ClickHouse
//! (`city_metrics`) and, as JSON with the same column names, to `analytics-aggregated`.

use serde::{Deserialize, Serialize};

use crate::event::Timestamp;

/// The `version` of a final row: it outranks every update of its window, and a replay of the
/// same input produces the same final row.
pub const FINAL_VERSION: u64 = u64::MAX;

/// Metrics of one city over one window `[window_start, window_end)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CityMetricsRow {
    /// Window start (inclusive), UTC.
    pub window_start: Timestamp,
    /// Window end (exclusive), UTC.
    pub window_end: Timestamp,
    /// The city.
    pub city: String,
    /// Events in the window (late events excluded).
    pub total_events: u64,
    /// `requested` events.
    pub requests: u64,
    /// `completed` events.
    pub completions: u64,
    /// `cancelled` events.
    pub cancellations: u64,
    /// Mean of the non-null `estimated_fare`s; `None` when there is none.
    pub avg_fare: Option<f64>,
    /// Exact number of distinct `user_id`s.
    pub unique_riders: u64,
    /// 1 once the watermark has passed `window_end`: the row will not change again.
    pub is_final: u8,
    /// Orders the rows of one window: updates carry their event count, the final row
    /// [`FINAL_VERSION`].
    pub version: u64,
    /// When the row was emitted (wall clock).
    pub updated_at: Timestamp,
}
