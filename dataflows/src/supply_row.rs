//! The output contract of SPEC §5: one row of live supply and demand per city and minute, as
//! it goes to ClickHouse (`city_supply`) and, as JSON with the same column names, to the
//! `city-supply` topic.

use serde::{Deserialize, Serialize};

use crate::event::Timestamp;

/// Added to the event count of a final row to make its `version`: every final row outranks
/// every update (whose version is its event count, far below this), and among final rows of
/// one minute the one computed from more events wins.
pub const FINAL_VERSION_BASE: u64 = 1 << 63;

/// The state of one city at the end of one minute `[minute, minute + 1 min)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CitySupplyRow {
    /// The minute's start, UTC (serialized like every ridepulse timestamp: ISO-8601, `Z`).
    pub minute: Timestamp,
    /// The city.
    pub city: String,
    /// Drivers whose latest location before the minute's end is `available` here and fresh.
    pub available_drivers: u64,
    /// Drivers whose latest location before the minute's end is `on_trip` here and fresh.
    pub on_trip_drivers: u64,
    /// Rides whose latest event before the minute's end is a `requested` at most
    /// `request_timeout_minutes` old.
    pub waiting_riders: u64,
    /// Rides whose latest event before the minute's end is `accepted` or `started` (at most
    /// `request_timeout_minutes` old: see `supply`'s module doc).
    pub rides_in_progress: u64,
    /// On-time `requested` events of the city during the minute.
    pub requests: u64,
    /// `waiting_riders / available_drivers`; `None` when no driver is available.
    pub pressure: Option<f64>,
    /// 1 once the watermarks of both input topics have passed the minute's end.
    pub is_final: u8,
    /// Orders the rows of one minute (see [`FINAL_VERSION_BASE`] and `supply`'s module doc).
    pub version: u64,
    /// When the row was emitted (wall clock).
    pub updated_at: Timestamp,
}

/// The counts of one row, before the row is dressed with its minute, city and version.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SupplyCounts {
    /// See [`CitySupplyRow::available_drivers`].
    pub available_drivers: u64,
    /// See [`CitySupplyRow::on_trip_drivers`].
    pub on_trip_drivers: u64,
    /// See [`CitySupplyRow::waiting_riders`].
    pub waiting_riders: u64,
    /// See [`CitySupplyRow::rides_in_progress`].
    pub rides_in_progress: u64,
    /// See [`CitySupplyRow::requests`].
    pub requests: u64,
    /// On-time events (both topics) of the city that can decide this minute's row: those
    /// with an event minute in `(m - horizon, m]`. Not a column: the row's version.
    pub events: u64,
}

impl SupplyCounts {
    /// Whether a row exists (SPEC §5: any of its counts is non-zero).
    pub fn has_row(&self) -> bool {
        self.available_drivers
            + self.on_trip_drivers
            + self.waiting_riders
            + self.rides_in_progress
            + self.requests
            > 0
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &SupplyCounts) {
        self.available_drivers += other.available_drivers;
        self.on_trip_drivers += other.on_trip_drivers;
        self.waiting_riders += other.waiting_riders;
        self.rides_in_progress += other.rides_in_progress;
        self.requests += other.requests;
        self.events += other.events;
    }

    /// The row of `city` for the minute starting at `minute` (in minutes since the epoch).
    pub fn row(&self, minute: u64, city: &str, is_final: bool) -> CitySupplyRow {
        CitySupplyRow {
            minute: Timestamp(minute as i64 * 60_000),
            city: city.to_string(),
            available_drivers: self.available_drivers,
            on_trip_drivers: self.on_trip_drivers,
            waiting_riders: self.waiting_riders,
            rides_in_progress: self.rides_in_progress,
            requests: self.requests,
            pressure: (self.available_drivers > 0)
                .then(|| self.waiting_riders as f64 / self.available_drivers as f64),
            is_final: u8::from(is_final),
            version: if is_final {
                FINAL_VERSION_BASE + self.events
            } else {
                self.events.min(FINAL_VERSION_BASE - 1)
            },
            updated_at: Timestamp(chrono::Utc::now().timestamp_millis()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_the_spec_column_names_and_null_pressure() {
        let counts = SupplyCounts {
            waiting_riders: 3,
            events: 7,
            ..SupplyCounts::default()
        };
        assert!(counts.has_row());
        let row = counts.row(29_923_800, "brno", true);
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["minute"], "2026-11-23T10:00:00.000Z");
        assert_eq!(json["pressure"], serde_json::Value::Null);
        assert_eq!(json["version"], FINAL_VERSION_BASE + 7);
        for column in [
            "city",
            "available_drivers",
            "on_trip_drivers",
            "waiting_riders",
            "rides_in_progress",
            "requests",
            "is_final",
            "updated_at",
        ] {
            assert!(json.get(column).is_some(), "{column}");
        }
        let more = SupplyCounts {
            available_drivers: 2,
            ..counts
        };
        assert_eq!(more.row(0, "brno", false).pressure, Some(1.5));
        assert_eq!(more.row(0, "brno", false).version, 7);
        assert!(!SupplyCounts {
            events: 9,
            ..SupplyCounts::default()
        }
        .has_row());
    }
}
