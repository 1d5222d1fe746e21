//! Emits SPEC §5's rows in update mode: final rows from the differential counts, updates of
//! open minutes from the live view's reports.
//!
//! Runs on worker 0: its input is a handful of changes per city and minute (not per event),
//! so one worker keeps up easily and the order "updates, then one final row" of each minute
//! holds without coordination. The differential counts arrive only for sealed minutes (the
//! input frontier has passed them); the state at `end(m)` is the accumulation of every change
//! at a time ≤ `m`, and it stays constant between changes, so a city with drivers and no new
//! event for three minutes has three rows. As the frontier passes minutes, their final rows
//! are emitted once, the live reports of those minutes are forgotten, and the held capability
//! follows the frontier (its output frontier is its input frontier, like `city_metrics`).

use std::collections::BTreeMap;
use std::time::Instant;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::frontier_capability;
use crate::supply::SupplyConfig;
use crate::supply_live::LiveReport;
use crate::supply_row::{CitySupplyRow, SupplyCounts};

/// A change of one city's counts at one minute, as differential reports it.
type Change = ((String, SupplyCounts), u64, isize);

/// The operator's state.
struct RowsState {
    config: SupplyConfig,
    /// Changes at minutes not yet final, by minute.
    pending: BTreeMap<u64, Vec<(String, SupplyCounts, isize)>>,
    /// Every city's counts as of the last final minute (a city absent has no row).
    current: BTreeMap<String, BTreeMap<SupplyCounts, isize>>,
    /// Every minute before this has had its final row.
    finalized_to: u64,
    /// Each worker's newest report: its sequence number, newest minute, and counts.
    reports: Vec<Option<LiveReport>>,
    /// The last update row emitted per open (minute, city).
    emitted: BTreeMap<(u64, String), SupplyCounts>,
    dirty: bool,
    last_flush: Instant,
    capability: Option<Capability<u64>>,
}

impl RowsState {
    /// Final rows of every city with a row, for the minutes in `minutes`.
    fn finals(&self, minutes: std::ops::Range<u64>, rows: &mut Vec<CitySupplyRow>) {
        if self.current.is_empty() {
            return;
        }
        for minute in minutes {
            for (city, values) in &self.current {
                for (counts, n) in values {
                    if *n > 0 && counts.has_row() {
                        rows.push(counts.row(minute, city, true));
                    }
                }
            }
        }
    }

    fn apply(&mut self, changes: Vec<(String, SupplyCounts, isize)>) {
        for (city, counts, diff) in changes {
            let values = self.current.entry(city.clone()).or_default();
            *values.entry(counts).or_default() += diff;
            values.retain(|_, n| *n != 0);
            if values.is_empty() {
                self.current.remove(&city);
            }
        }
    }

    /// Final rows of the minutes before `done` (everything before it is sealed).
    fn finalize(&mut self, done: u64) -> Vec<CitySupplyRow> {
        let mut rows = Vec::new();
        let mut cursor = self.finalized_to;
        let times: Vec<u64> = self.pending.range(..done).map(|(t, _)| *t).collect();
        for time in times {
            self.finals(cursor..time, &mut rows);
            let changes = self.pending.remove(&time).expect("listed above");
            self.apply(changes);
            cursor = cursor.max(time);
        }
        if done == u64::MAX {
            // The input is complete: every record was retracted, nothing is left to count.
            debug_assert!(self.current.is_empty(), "counts left at the end");
        } else {
            self.finals(cursor..done, &mut rows);
        }
        self.finalized_to = self.finalized_to.max(done);
        let open = self.finalized_to;
        self.emitted.retain(|(minute, _), _| *minute >= open);
        rows
    }

    fn record(&mut self, report: LiveReport) {
        let slot = &mut self.reports[report.worker];
        if slot.as_ref().is_none_or(|r| r.seq < report.seq) {
            *slot = Some(report);
            self.dirty = true;
        }
    }

    /// Update rows of open minutes whose counts changed since their last update. Waits for
    /// a report of every worker and counts only the minutes that every worker which has read
    /// something covers, so a row never lacks a worker's share (a worker whose newest report
    /// no longer covers a minute, or does not reach it yet, holds that minute's updates).
    fn updates(&mut self) -> Vec<CitySupplyRow> {
        if self.reports.iter().any(Option::is_none) {
            return Vec::new();
        }
        let reports = self.reports.iter().flatten();
        let covers = reports.clone().filter_map(|r| r.covers);
        let (Some(first), Some(through)) = (
            covers.clone().map(|(first, _)| first).max(),
            covers.map(|(_, last)| last).min(),
        ) else {
            return Vec::new();
        };
        let first = first.max(self.finalized_to);
        let mut sums: BTreeMap<(u64, &str), SupplyCounts> = BTreeMap::new();
        for report in reports {
            for (minute, city, counts) in &report.counts {
                if (first..=through).contains(minute) {
                    sums.entry((*minute, city)).or_default().add(counts);
                }
            }
        }
        let mut rows = Vec::new();
        for ((minute, city), counts) in sums {
            if !counts.has_row() {
                continue;
            }
            let key = (minute, city.to_string());
            if self.emitted.get(&key) != Some(&counts) {
                rows.push(counts.row(minute, city, false));
                self.emitted.insert(key, counts);
            }
        }
        rows
    }
}

/// Rows from differential's per-city counts (`counts`) and the live view's reports.
pub(crate) fn build<'scope>(
    counts: StreamVec<'scope, u64, Change>,
    live: StreamVec<'scope, u64, LiveReport>,
    config: &SupplyConfig,
) -> StreamVec<'scope, u64, CitySupplyRow> {
    let scope = counts.scope();
    let config = config.clone();
    counts
        .binary_frontier(
            live,
            Exchange::new(|_: &Change| 0),
            Exchange::new(|_: &LiveReport| 0),
            "SupplyRows",
            move |capability, info| {
                let activator = scope.activator_for(info.address);
                let mut state = RowsState {
                    finalized_to: config.finalized_through,
                    config,
                    pending: BTreeMap::new(),
                    current: BTreeMap::new(),
                    reports: vec![None; scope.peers()],
                    emitted: BTreeMap::new(),
                    dirty: false,
                    last_flush: Instant::now(),
                    capability: Some(capability),
                };
                move |(counts, counts_frontier), (live, live_frontier), output| {
                    counts.for_each(|_, data| {
                        for ((city, counts), time, diff) in data.drain(..) {
                            state
                                .pending
                                .entry(time)
                                .or_default()
                                .push((city, counts, diff));
                        }
                    });
                    live.for_each(|_, data| {
                        for report in data.drain(..) {
                            state.record(report);
                        }
                    });
                    let done = counts_frontier
                        .frontier()
                        .first()
                        .copied()
                        .unwrap_or(u64::MAX);
                    if done > state.finalized_to {
                        let rows = state.finalize(done);
                        if let (false, Some(capability)) = (rows.is_empty(), &state.capability) {
                            output.session(capability).give_iterator(rows.into_iter());
                        }
                    }
                    if state.dirty {
                        let since = state.last_flush.elapsed();
                        if since >= state.config.emit_interval {
                            let rows = state.updates();
                            if let (false, Some(capability)) = (rows.is_empty(), &state.capability)
                            {
                                output.session(capability).give_iterator(rows.into_iter());
                            }
                            state.dirty = false;
                            state.last_flush = Instant::now();
                        } else {
                            activator.activate_after(state.config.emit_interval - since);
                        }
                    }
                    let frontier = [counts_frontier, live_frontier]
                        .iter()
                        .filter_map(|f| f.frontier().first().copied())
                        .min();
                    frontier_capability::follow(&mut state.capability, frontier);
                }
            },
        )
        .container::<Vec<_>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(workers: usize) -> RowsState {
        RowsState {
            config: SupplyConfig::default(),
            pending: BTreeMap::new(),
            current: BTreeMap::new(),
            finalized_to: 0,
            reports: vec![None; workers],
            emitted: BTreeMap::new(),
            dirty: false,
            last_flush: Instant::now(),
            capability: None,
        }
    }

    fn report(worker: usize, seq: u64, covers: Option<(u64, u64)>) -> LiveReport {
        let waiting = SupplyCounts {
            waiting_riders: 1,
            events: 1,
            ..SupplyCounts::default()
        };
        let counts = match covers {
            Some((first, last)) => (first..=last)
                .map(|m| (m, "brno".to_string(), waiting))
                .collect(),
            None => Vec::new(),
        };
        LiveReport {
            worker,
            seq,
            covers,
            counts,
        }
    }

    fn minutes(rows: &[CitySupplyRow]) -> Vec<(i64, u64)> {
        rows.iter()
            .map(|r| (r.minute.0 / 60_000, r.waiting_riders))
            .collect()
    }

    #[test]
    fn updates_cover_only_minutes_every_worker_counted() {
        let mut s = state(3);
        s.record(report(0, 1, Some((5, 7))));
        assert!(s.updates().is_empty(), "workers 1 and 2 have not reported");
        s.record(report(1, 1, Some((6, 8))));
        s.record(report(2, 1, None)); // read nothing: holds nothing back
        assert_eq!(minutes(&s.updates()), [(6, 2), (7, 2)]);
        assert!(s.updates().is_empty(), "unchanged rows are not repeated");
        // An older report arriving late changes nothing; a worker with nothing open read
        // since the frontier passed (first > last) holds every update.
        s.record(report(1, 0, Some((0, 9))));
        assert!(s.updates().is_empty());
        s.record(report(2, 1, Some((9, 8))));
        assert!(s.updates().is_empty());
        s.record(report(2, 2, Some((7, 9))));
        assert_eq!(minutes(&s.updates()), [(7, 3)]);
        // Final minutes get no more updates.
        s.finalize(8);
        s.record(report(0, 2, Some((7, 9))));
        s.record(report(1, 2, Some((7, 9))));
        assert_eq!(minutes(&s.updates()), [(8, 3), (9, 3)]);
    }

    #[test]
    fn final_rows_repeat_a_constant_state_for_every_minute_until_it_changes() {
        let mut s = state(1);
        let counts = SupplyCounts {
            available_drivers: 2,
            events: 2,
            ..SupplyCounts::default()
        };
        s.pending
            .entry(10)
            .or_default()
            .push(("wien".into(), counts, 1));
        s.pending
            .entry(13)
            .or_default()
            .push(("wien".into(), counts, -1));
        assert_eq!(s.finalize(12).len(), 2, "minutes 10 and 11");
        let rows = s.finalize(20);
        assert_eq!(rows.len(), 1, "minute 12; from 13 on the city has no row");
        assert_eq!(rows[0].minute.0, 12 * 60_000);
        assert_eq!(rows[0].version, crate::supply_row::FINAL_VERSION_BASE + 2);
        assert!(s.current.is_empty());
    }
}
