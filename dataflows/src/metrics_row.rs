//! The output contract of SPEC §4: one row of rolling city metrics, as it goes to ClickHouse
//! (`city_metrics`) and, as JSON with the same column names, to `analytics-aggregated`.

use serde::{Deserialize, Serialize};

use crate::event::Timestamp;

/// Where final rows' versions start: every update of a window (versioned by its event count
/// so far, always below this) is outranked by the window's final row.
pub const FINAL_VERSION: u64 = 1 << 63;

/// The `version` of a final row computed from `total_events` events (SPEC §4): it outranks
/// every update of its window, a replay of the same input produces the same final row, and
/// a final row computed from fewer events (a partial replay after retention trimmed the
/// topic's head) ranks below one computed from more, so `ReplacingMergeTree(version)` keeps
/// the complete one whichever was written last.
pub fn final_version(total_events: u64) -> u64 {
    FINAL_VERSION.saturating_add(total_events.min(FINAL_VERSION - 1))
}

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
    /// [`final_version`] of it.
    pub version: u64,
    /// When the row was emitted (wall clock).
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_rows_rank_by_completeness_above_every_update() {
        assert!(final_version(0) > u64::from(u32::MAX) * 1000);
        assert!(final_version(10) > final_version(9));
        assert!(final_version(1) > FINAL_VERSION - 1);
        assert_eq!(final_version(7), final_version(7));
        assert_eq!(final_version(u64::MAX), u64::MAX);
    }
}
