//! The rows the sinks insert, in RowBinary through the `clickhouse` crate's `Row` derive.
//!
//! Field order is the column list of the `INSERT`; names match [`super::schema`]. Time
//! columns that are `DateTime64(3)` on modern servers and `DateTime` on old ones are a
//! [`Moment`], which encodes itself for the table it goes to (see [`super::schema::Layout`]).

use clickhouse::Row;
use compact_str::CompactString;
use dataflows::metrics_row::CityMetricsRow;
use dataflows::minute_row::CityMinuteRow;
use dataflows::partitioned_source::SourcedEvent;
use dataflows::supply_row::CitySupplyRow;
use serde::{Serialize, Serializer};

/// A point in time (ms since the epoch) for a `DateTime64(3)` column (Int64 milliseconds)
/// or, on old servers, a `DateTime` column (UInt32 seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    /// Milliseconds since the epoch.
    pub ms: i64,
    /// Encode as `DateTime64(3)`.
    pub precise: bool,
}

impl Serialize for Moment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.precise {
            serializer.serialize_i64(self.ms)
        } else {
            serializer.serialize_u32(seconds(self.ms))
        }
    }
}

/// Whole seconds for a `DateTime` column (clamped to its range).
pub fn seconds(ms: i64) -> u32 {
    ms.div_euclid(1000).clamp(0, u32::MAX as i64) as u32
}

/// A row of `city_metrics`.
#[derive(Clone, Debug, Row, Serialize)]
pub struct MetricsRecord {
    /// `window_start` (DateTime).
    pub window_start: u32,
    /// `window_end` (DateTime).
    pub window_end: u32,
    /// `city`.
    pub city: String,
    /// `total_events`.
    pub total_events: u64,
    /// `requests`.
    pub requests: u64,
    /// `completions`.
    pub completions: u64,
    /// `cancellations`.
    pub cancellations: u64,
    /// `avg_fare`.
    pub avg_fare: Option<f64>,
    /// `unique_riders`.
    pub unique_riders: u64,
    /// `is_final`.
    pub is_final: u8,
    /// `version`.
    pub version: u64,
    /// `updated_at`.
    pub updated_at: Moment,
}

impl MetricsRecord {
    /// The record of a metrics row, for a table whose `updated_at` is `DateTime64` or not.
    pub fn new(row: &CityMetricsRow, precise: bool) -> MetricsRecord {
        MetricsRecord {
            window_start: seconds(row.window_start.millis()),
            window_end: seconds(row.window_end.millis()),
            city: row.city.clone(),
            total_events: row.total_events,
            requests: row.requests,
            completions: row.completions,
            cancellations: row.cancellations,
            avg_fare: row.avg_fare,
            unique_riders: row.unique_riders,
            is_final: row.is_final,
            version: row.version,
            updated_at: Moment {
                ms: row.updated_at.millis(),
                precise,
            },
        }
    }
}

/// A row of `city_supply` (SPEC §5).
#[derive(Clone, Debug, Row, Serialize)]
pub struct SupplyRecord {
    /// `minute` (DateTime).
    pub minute: u32,
    /// `city`.
    pub city: String,
    /// `available_drivers`.
    pub available_drivers: u64,
    /// `on_trip_drivers`.
    pub on_trip_drivers: u64,
    /// `waiting_riders`.
    pub waiting_riders: u64,
    /// `rides_in_progress`.
    pub rides_in_progress: u64,
    /// `requests`.
    pub requests: u64,
    /// `pressure`.
    pub pressure: Option<f64>,
    /// `is_final`.
    pub is_final: u8,
    /// `version`.
    pub version: u64,
    /// `updated_at`.
    pub updated_at: Moment,
}

impl SupplyRecord {
    /// The record of a supply row, for a table whose `updated_at` is `DateTime64` or not.
    pub fn new(row: &CitySupplyRow, precise: bool) -> SupplyRecord {
        SupplyRecord {
            minute: seconds(row.minute.millis()),
            city: row.city.clone(),
            available_drivers: row.available_drivers,
            on_trip_drivers: row.on_trip_drivers,
            waiting_riders: row.waiting_riders,
            rides_in_progress: row.rides_in_progress,
            requests: row.requests,
            pressure: row.pressure,
            is_final: row.is_final,
            version: row.version,
            updated_at: Moment {
                ms: row.updated_at.millis(),
                precise,
            },
        }
    }
}

/// A row of `city_minutes` (the per-minute rollup).
#[derive(Clone, Debug, Row, Serialize)]
pub struct MinuteRecord {
    /// `minute` (DateTime).
    pub minute: u32,
    /// `city`.
    pub city: String,
    /// `events`.
    pub events: u64,
    /// `requested`.
    pub requested: u64,
    /// `accepted`.
    pub accepted: u64,
    /// `started`.
    pub started: u64,
    /// `completed`.
    pub completed: u64,
    /// `cancelled`.
    pub cancelled: u64,
    /// `fare_sum`.
    pub fare_sum: f64,
    /// `fares`.
    pub fares: u64,
    /// `unique_riders`.
    pub unique_riders: u64,
    /// `riders` (Array(String)).
    pub riders: Vec<CompactString>,
    /// `max_event_ms`.
    pub max_event_ms: i64,
    /// `is_final`.
    pub is_final: u8,
    /// `version`.
    pub version: u64,
    /// `updated_at`.
    pub updated_at: Moment,
}

impl MinuteRecord {
    /// The record of a minute row, for a table whose `updated_at` is `DateTime64` or not.
    /// The row's riders move into the record (hundreds of thousands in a backfill's last
    /// write: a copy would cost the run's end more than the insert's encoding).
    pub fn new(row: &mut CityMinuteRow, precise: bool) -> MinuteRecord {
        MinuteRecord {
            minute: seconds(row.minute.millis()),
            city: row.city.clone(),
            events: row.events,
            requested: row.requested,
            accepted: row.accepted,
            started: row.started,
            completed: row.completed,
            cancelled: row.cancelled,
            fare_sum: row.fare_sum,
            fares: row.fares,
            unique_riders: row.unique_riders,
            riders: std::mem::take(&mut row.riders),
            max_event_ms: row.max_event_ms,
            is_final: row.is_final,
            version: row.version,
            updated_at: Moment {
                ms: row.updated_at.millis(),
                precise,
            },
        }
    }
}

/// A row of `dead_letters`.
#[derive(Clone, Debug, Row, Serialize)]
pub struct DeadLetterRecord {
    /// `source_topic`.
    pub source_topic: String,
    /// `kafka_partition`.
    pub kafka_partition: u32,
    /// `kafka_offset`.
    pub kafka_offset: u64,
    /// `error`: the parser's message, naming the field (or ClickHouse's, for a row it
    /// refused).
    pub error: String,
    /// `reason`: the short code dead letters are counted by (`EventError::reason`, or
    /// `rejected_by_clickhouse`).
    pub reason: String,
    /// `payload`, as received (invalid UTF-8 replaced).
    pub payload: String,
    /// `received_at` (DateTime).
    pub received_at: u32,
}

/// A row of `ride_events`.
#[derive(Clone, Debug, Row, Serialize)]
pub struct EventRecord {
    /// `event_type`.
    pub event_type: &'static str,
    /// `ride_id`.
    pub ride_id: String,
    /// `timestamp`.
    pub timestamp: Moment,
    /// `timestamp_ms` (exact on every server).
    pub timestamp_ms: i64,
    /// `city`.
    pub city: String,
    /// `user_id`.
    pub user_id: String,
    /// `driver_id`.
    pub driver_id: Option<String>,
    /// `estimated_fare`.
    pub estimated_fare: Option<f64>,
    /// `pickup_lat`.
    pub pickup_lat: Option<f64>,
    /// `pickup_lng`.
    pub pickup_lng: Option<f64>,
    /// `dropoff_lat`.
    pub dropoff_lat: Option<f64>,
    /// `dropoff_lng`.
    pub dropoff_lng: Option<f64>,
    /// `kafka_partition`.
    pub kafka_partition: u32,
    /// `kafka_offset`.
    pub kafka_offset: u64,
    /// `is_late`.
    pub is_late: u8,
    /// `ingested_at` (DateTime).
    pub ingested_at: u32,
}

impl EventRecord {
    /// The record of a sourced event, written at `now_ms`.
    pub fn new(sourced: &SourcedEvent, precise: bool, now_ms: i64) -> EventRecord {
        let e = &sourced.event;
        EventRecord {
            event_type: e.event_type.as_str(),
            ride_id: e.ride_id.to_string(),
            timestamp: Moment {
                ms: e.timestamp.millis(),
                precise,
            },
            timestamp_ms: e.timestamp.millis(),
            city: e.city.to_string(),
            user_id: e.user_id.to_string(),
            driver_id: e.driver_id.as_deref().map(String::from),
            estimated_fare: e.estimated_fare,
            pickup_lat: e.pickup.as_ref().map(|p| p.lat),
            pickup_lng: e.pickup.as_ref().map(|p| p.lng),
            dropoff_lat: e.dropoff.as_ref().map(|p| p.lat),
            dropoff_lng: e.dropoff.as_ref().map(|p| p.lng),
            kafka_partition: sourced.partition,
            kafka_offset: sourced.offset,
            is_late: u8::from(sourced.late),
            ingested_at: seconds(now_ms),
        }
    }
}

/// A row of `checkpoints`: where a job resumes reading one partition, and the state it
/// needs to rebuild exactly what it had (see `kafka::source`).
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, serde::Deserialize)]
pub struct CheckpointRecord {
    /// The job's consumer group.
    pub consumer_group: String,
    /// The source topic.
    pub topic: String,
    /// The partition.
    pub kafka_partition: u32,
    /// The first offset to read again on restart.
    pub next_offset: i64,
    /// The partition's largest event time before `next_offset` (its lateness clock).
    pub max_event_ms: Option<i64>,
    /// Every message below this offset is already in `ride_events` or the dead-letter
    /// topic: a restart re-reads but does not rewrite them.
    pub written_to: i64,
    /// Every window ending at or before this minute (since the epoch) had its final row
    /// durably written: a restart does not emit those windows again.
    pub finalized_through: u64,
    /// When the checkpoint was taken (µs since the epoch); the newest wins.
    pub written_at_us: u64,
}
