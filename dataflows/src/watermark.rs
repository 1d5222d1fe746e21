//! Per-partition event-time clocks: which events are late and how far the watermark is.
//!
//! SPEC §3 judges lateness per partition, so that results never depend on how fast each
//! partition happens to be read: an event is late when it is more than the allowed lateness
//! behind the largest event time read before it *from the same partition*. The watermark is
//! the minimum, over partitions that are not idle, of their largest event time, minus the
//! allowed lateness; a partition at its end offset and quiet for the idle timeout stops
//! holding it back. This is a plain state machine (time is passed in), shared by every
//! source: in-memory, file and Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One partition's clock.
#[derive(Clone, Debug)]
struct PartitionClock {
    /// Largest event time read so far (ms).
    max_ms: Option<i64>,
    /// Whether the source says the partition is at its end offset.
    at_end: bool,
    /// When it last delivered an event or was (re)assigned.
    last_activity: Instant,
    /// Whether the partition is done for good (an in-memory or file partition read to the
    /// end, or `--until-end` reached the end offset).
    finished: bool,
}

/// Tracks every partition a source reads and derives lateness and the watermark.
#[derive(Clone, Debug)]
pub struct WatermarkTracker {
    lateness_ms: i64,
    idle_timeout: Duration,
    partitions: BTreeMap<u32, PartitionClock>,
    /// The largest watermark handed out so far: it never goes backwards.
    published_ms: Option<i64>,
}

impl WatermarkTracker {
    /// A tracker with SPEC §3's knobs.
    pub fn new(allowed_lateness: Duration, idle_timeout: Duration) -> WatermarkTracker {
        WatermarkTracker {
            lateness_ms: allowed_lateness.as_millis() as i64,
            idle_timeout,
            partitions: BTreeMap::new(),
            published_ms: None,
        }
    }

    /// Starts tracking a partition (it holds the watermark until it reads an event, reaches
    /// its end and stays quiet, or finishes).
    pub fn add_partition(&mut self, partition: u32, now: Instant) {
        self.partitions.entry(partition).or_insert(PartitionClock {
            max_ms: None,
            at_end: false,
            last_activity: now,
            finished: false,
        });
    }

    /// Records an event read from `partition` and says whether it is late by the
    /// per-partition rule (more than the allowed lateness behind that partition's largest
    /// event time read before it). The first event of a partition is never late.
    pub fn observe(&mut self, partition: u32, event_ms: i64, now: Instant) -> bool {
        self.add_partition(partition, now);
        let clock = self.partitions.get_mut(&partition).expect("added");
        let late = clock
            .max_ms
            .is_some_and(|max| event_ms < max - self.lateness_ms);
        clock.max_ms = Some(clock.max_ms.map_or(event_ms, |max| max.max(event_ms)));
        clock.last_activity = now;
        clock.at_end = false;
        late
    }

    /// The source reached `partition`'s end offset (or new data appeared: `false`).
    pub fn set_at_end(&mut self, partition: u32, at_end: bool, now: Instant) {
        self.add_partition(partition, now);
        let clock = self.partitions.get_mut(&partition).expect("added");
        if at_end && !clock.at_end {
            // Idleness counts from the later of the last event and reaching the end.
            clock.last_activity = clock.last_activity.max(now);
        }
        clock.at_end = at_end;
    }

    /// The partition will deliver nothing more.
    pub fn finish(&mut self, partition: u32) {
        if let Some(clock) = self.partitions.get_mut(&partition) {
            clock.finished = true;
        }
    }

    /// Whether every tracked partition is finished (then the source can drop its capability).
    pub fn all_finished(&self) -> bool {
        self.partitions.values().all(|c| c.finished)
    }

    /// The watermark in milliseconds, or `None` while it is unknown. Monotone: it never
    /// returns less than it returned before.
    pub fn watermark_ms(&mut self, now: Instant) -> Option<i64> {
        let mut least: Option<i64> = None;
        for clock in self.partitions.values() {
            let idle = clock.at_end
                && now.saturating_duration_since(clock.last_activity) >= self.idle_timeout;
            if clock.finished || idle {
                continue;
            }
            match clock.max_ms {
                // An active partition that has read nothing yet: nothing can be promised.
                None => return self.published_ms,
                Some(max) => {
                    let mark = max - self.lateness_ms;
                    least = Some(least.map_or(mark, |l| l.min(mark)));
                }
            }
        }
        if let Some(mark) = least {
            self.published_ms = Some(self.published_ms.map_or(mark, |p| p.max(mark)));
        }
        self.published_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> (WatermarkTracker, Instant) {
        (
            WatermarkTracker::new(Duration::from_secs(30), Duration::from_secs(5)),
            Instant::now(),
        )
    }

    #[test]
    fn lateness_is_judged_at_exactly_the_allowed_lateness() {
        let (mut t, now) = tracker();
        assert!(!t.observe(0, 100_000, now), "the first event is never late");
        assert!(!t.observe(0, 70_000, now), "exactly 30 s behind is on time");
        assert!(t.observe(0, 69_999, now), "30.001 s behind is late");
        assert!(!t.observe(0, 99_000, now));
        assert!(!t.observe(0, 200_000, now));
        assert!(t.observe(0, 100_000, now), "judged against the new maximum");
    }

    #[test]
    fn partitions_are_judged_independently() {
        let (mut t, now) = tracker();
        t.observe(0, 1_000_000, now);
        assert!(
            !t.observe(1, 10_000, now),
            "far behind another partition is not late"
        );
        assert!(!t.observe(1, 20_000, now));
        assert_eq!(t.watermark_ms(now), Some(20_000 - 30_000));
    }

    #[test]
    fn the_watermark_waits_for_every_active_partition_and_never_regresses() {
        let (mut t, now) = tracker();
        t.add_partition(0, now);
        t.add_partition(1, now);
        t.observe(0, 100_000, now);
        assert_eq!(
            t.watermark_ms(now),
            None,
            "partition 1 has read nothing yet"
        );
        t.observe(1, 90_000, now);
        assert_eq!(t.watermark_ms(now), Some(60_000));
        t.observe(1, 150_000, now);
        assert_eq!(t.watermark_ms(now), Some(70_000));
        // A new partition with nothing read holds the watermark where it is, not lower.
        t.add_partition(2, now);
        assert_eq!(t.watermark_ms(now), Some(70_000));
        t.observe(2, 1_000, now);
        assert_eq!(
            t.watermark_ms(now),
            Some(70_000),
            "the watermark never goes backwards"
        );
    }

    #[test]
    fn an_idle_partition_stops_holding_the_watermark_back() {
        let (mut t, now) = tracker();
        t.observe(0, 100_000, now);
        t.observe(1, 500_000, now);
        assert_eq!(t.watermark_ms(now), Some(70_000));
        t.set_at_end(0, true, now);
        assert_eq!(
            t.watermark_ms(now + Duration::from_secs(4)),
            Some(70_000),
            "not idle before the timeout"
        );
        assert_eq!(t.watermark_ms(now + Duration::from_secs(5)), Some(470_000));
        // It comes back: it holds the watermark again from its own clock, which cannot go
        // backwards; its event far behind is on time by the partition rule (the source
        // counts it late because its window is already final).
        let later = now + Duration::from_secs(6);
        assert!(!t.observe(0, 110_000, later));
        assert_eq!(t.watermark_ms(later), Some(470_000));
    }

    #[test]
    fn finished_partitions_do_not_hold_the_watermark() {
        let (mut t, now) = tracker();
        t.observe(0, 100_000, now);
        t.add_partition(1, now);
        assert_eq!(t.watermark_ms(now), None);
        t.finish(1);
        assert_eq!(t.watermark_ms(now), Some(70_000));
        assert!(!t.all_finished());
        t.finish(0);
        assert!(t.all_finished());
    }
}
