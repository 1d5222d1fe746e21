//! The independent reference for SPEC §3: rolling city metrics computed the slow, obvious
//! way (walk each partition in order, judge lateness against that partition's largest event
//! time so far, add every on-time event to its five windows). Shared by the in-memory
//! oracle tests and the real-broker test so both check against one definition.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use dataflows::event::{EventType, RideEvent};
use dataflows::metrics_row::{final_version, CityMetricsRow};

#[derive(Default, Debug)]
pub struct Expected {
    pub total: u64,
    pub requests: u64,
    completions: u64,
    cancellations: u64,
    fares: Vec<f64>,
    riders: BTreeSet<String>,
}

/// SPEC §3 done the slow, obvious way.
pub fn oracle(
    partitions: &[Vec<RideEvent>],
) -> (BTreeMap<(i64, String), Expected>, BTreeMap<String, u64>) {
    let mut windows: BTreeMap<(i64, String), Expected> = BTreeMap::new();
    let mut late: BTreeMap<String, u64> = BTreeMap::new();
    for partition in partitions {
        let mut largest: Option<i64> = None;
        for event in partition {
            let t = event.timestamp.0;
            let is_late = matches!(largest, Some(max) if max - t > 30_000);
            largest = Some(largest.map_or(t, |max| max.max(t)));
            if is_late {
                *late.entry(event.city.to_string()).or_default() += 1;
                continue;
            }
            let minute_start = t - t.rem_euclid(60_000);
            for k in 0..5 {
                let start = minute_start - k * 60_000;
                let w = windows.entry((start, event.city.to_string())).or_default();
                w.total += 1;
                w.requests += u64::from(event.event_type == EventType::Requested);
                w.completions += u64::from(event.event_type == EventType::Completed);
                w.cancellations += u64::from(event.event_type == EventType::Cancelled);
                if let Some(fare) = event.estimated_fare {
                    w.fares.push(fare);
                }
                w.riders.insert(event.user_id.to_string());
            }
        }
    }
    (windows, late)
}

/// Asserts that the final rows among `rows` are exactly the oracle's windows (one final row
/// per window; counts exact, distinct riders exact, avg_fare within 1e-9 relative) and
/// returns them by (window start ms, city).
pub fn assert_final_rows_match<'a>(
    rows: &'a [CityMetricsRow],
    expected: &BTreeMap<(i64, String), Expected>,
    what: &str,
) -> BTreeMap<(i64, String), &'a CityMetricsRow> {
    let mut finals: BTreeMap<(i64, String), &CityMetricsRow> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.is_final == 1) {
        assert_eq!(row.version, final_version(row.total_events));
        let key = (row.window_start.0, row.city.clone());
        assert!(
            finals.insert(key.clone(), row).is_none(),
            "{what}: two final rows for {key:?}"
        );
    }
    assert_eq!(
        finals.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: final windows differ"
    );
    for (key, want) in expected {
        let got = finals[key];
        assert_eq!(got.window_end.0 - got.window_start.0, 300_000);
        let counts = (
            got.total_events,
            got.requests,
            got.completions,
            got.cancellations,
            got.unique_riders,
        );
        let want_counts = (
            want.total,
            want.requests,
            want.completions,
            want.cancellations,
            want.riders.len() as u64,
        );
        assert_eq!(counts, want_counts, "{what}: {key:?}");
        match (got.avg_fare, want.fares.is_empty()) {
            (None, true) => {}
            (Some(avg), false) => {
                let mean = want.fares.iter().sum::<f64>() / want.fares.len() as f64;
                assert!(
                    ((avg - mean) / mean).abs() < 1e-9,
                    "{what}: {key:?} avg {avg} want {mean}"
                );
            }
            (got, _) => panic!(
                "{what}: {key:?} avg_fare {got:?} but {} fares",
                want.fares.len()
            ),
        }
    }
    finals
}
