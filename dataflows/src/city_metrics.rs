//! The rolling city metrics of SPEC §3: sliding event-time windows per city, closed by the
//! watermark, emitted in update mode.
//!
//! Events arrive at timely time = their event minute (sources guarantee this; see
//! `partitioned_source`). Late events leave for the job's counters; on-time events become
//! compact [`WindowEvent`]s and go through two operators:
//!
//! ```text
//!  on-time events ──► exchange by (city, rider) ──► window_partials: per worker, its
//!                     riders' counts per city and minute, exact distinct riders
//!                     (riders of two workers never overlap) ──► BucketDelta
//!                 ──► exchange by city ──► city_windows: the deltas summed into minute
//!                     buckets; window rows (updates, then one final row once the frontier
//!                     passes the window's end) and per-minute rollup rows
//! ```
//!
//! The heavy part (a rider lookup per event) is spread evenly over the workers whatever the
//! cities' sizes; what crosses to the city's worker is a delta per city and minute per
//! flush. Both operators keep their output frontier at their input frontier, so the rows'
//! finality follows the sources' watermark exactly, and the final rows are sums of exact
//! integers: the same for any number of workers and any interleaving.

use std::time::Duration;

use timely::dataflow::StreamVec;

use crate::city_windows::{self, Emitted};
use crate::event::{EventType, RideEvent, Timestamp};
use crate::inline_name::InlineName;
use crate::metrics_row::CityMetricsRow;
use crate::minute_row::CityMinuteRow;
use crate::partitioned_source::SourcedEvent;
use crate::split::{split, Side};
use crate::window_partials;

/// Window shape and emission settings.
#[derive(Clone, Debug)]
pub struct WindowConfig {
    /// Window length in minutes (a multiple of the slide).
    pub length_minutes: u64,
    /// Slide in minutes; windows start at multiples of it since the Unix epoch.
    pub slide_minutes: u64,
    /// Minimum time between two updates of an open window.
    pub emit_interval: Duration,
    /// Windows ending at or before this minute already had their final rows written before
    /// a restart: they are not emitted again (0 for a fresh start).
    pub finalized_through: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            length_minutes: 5,
            slide_minutes: 1,
            emit_interval: Duration::from_secs(1),
            finalized_through: 0,
        }
    }
}

/// A late event, for the job's late-event counters (and `ride_events.is_late`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LateEvent {
    /// Its city.
    pub city: String,
    /// Its event time.
    pub timestamp: Timestamp,
}

/// What [`build`] produces.
pub struct CityMetrics<'scope> {
    /// Metric rows: updates while windows are open, one final row per window.
    pub rows: StreamVec<'scope, u64, CityMetricsRow>,
    /// Per-minute rollup rows: updates while a minute is open, one final row per minute.
    pub minutes: StreamVec<'scope, u64, CityMinuteRow>,
    /// Every late event (they add to no window).
    pub late: StreamVec<'scope, u64, LateEvent>,
}

/// What the windows need of an on-time event, and all that crosses the exchange: a
/// `SourcedEvent` is ~190 bytes (its ride, driver and coordinates too), moved once more
/// into the exchange's buffers and once out of them per event; this is ~80, with no heap:
/// its city and rider are copied inline, so the ride's strings are all freed by the worker
/// that allocated them (a free on another thread is the allocator's slow path).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct WindowEvent {
    pub(crate) city: InlineName,
    pub(crate) rider: InlineName,
    /// Event time (ms).
    pub(crate) timestamp_ms: i64,
    pub(crate) event_type: EventType,
    pub(crate) estimated_fare: Option<f64>,
}

impl WindowEvent {
    fn of(event: RideEvent) -> WindowEvent {
        WindowEvent {
            city: InlineName::new(&event.city),
            rider: InlineName::new(&event.user_id),
            timestamp_ms: event.timestamp.millis(),
            event_type: event.event_type,
            estimated_fare: event.estimated_fare,
        }
    }
}

/// Starts of the windows (`length` minutes, sliding by `slide`) containing `minute`.
pub(crate) fn window_starts(minute: u64, length: u64, slide: u64) -> impl Iterator<Item = u64> {
    let last = minute - minute % slide;
    let first = (minute + 1).saturating_sub(length).div_ceil(slide) * slide;
    (first..=last).step_by(slide as usize)
}

/// Where the window starting at `start` is among [`window_starts`]`(minute, ..)`.
pub(crate) fn window_index(minute: u64, start: u64, length: u64, slide: u64) -> usize {
    let first = (minute + 1).saturating_sub(length).div_ceil(slide) * slide;
    ((start - first) / slide) as usize
}

/// Rolling per-city metrics from sourced events (timely time = event minute).
pub fn build<'scope>(
    events: StreamVec<'scope, u64, SourcedEvent>,
    config: &WindowConfig,
) -> CityMetrics<'scope> {
    assert!(config.slide_minutes > 0 && config.length_minutes.is_multiple_of(config.slide_minutes));
    // Late and on-time events part ways by move: a `clone()` of the stream would copy
    // every event for the late branch only.
    let (on_time, late) = split(events, "LateEvents", |e: SourcedEvent| {
        if e.late {
            Side::Right(LateEvent {
                city: e.event.city.into_string(),
                timestamp: e.event.timestamp,
            })
        } else {
            Side::Left(WindowEvent::of(e.event))
        }
    });
    let deltas = window_partials::build(on_time, config);
    let emitted = city_windows::build(deltas, config);
    let (rows, minutes) = split(emitted, "RowKinds", |emitted| match emitted {
        Emitted::Window(row) => Side::Left(row),
        Emitted::Minute(row) => Side::Right(row),
    });
    CityMetrics {
        rows,
        minutes,
        late,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket's per-window rider counts are found again from the window's start, for
    /// every shape the config allows (the oracle tests run the default 5/1 only).
    #[test]
    fn window_index_is_the_position_among_window_starts() {
        for (length, slide) in [(5, 1), (6, 2), (6, 3), (4, 4), (1, 1), (10, 5)] {
            for minute in 0..60 {
                let starts: Vec<u64> = window_starts(minute, length, slide).collect();
                assert!(starts.len() <= (length / slide) as usize);
                for (position, start) in starts.into_iter().enumerate() {
                    assert!(start <= minute && minute < start + length);
                    assert_eq!(window_index(minute, start, length, slide), position);
                }
            }
        }
    }
}
