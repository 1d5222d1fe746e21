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

use serde::{Deserialize, Serialize};

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
        let late = self.is_late(partition, event_ms);
        self.add_partition(partition, now);
        let clock = self.partitions.get_mut(&partition).expect("added");
        clock.max_ms = Some(clock.max_ms.map_or(event_ms, |max| max.max(event_ms)));
        clock.last_activity = now;
        clock.at_end = false;
        late
    }

    /// Whether an event of `event_ms` read next from `partition` would be late by the
    /// per-partition rule ([`WatermarkTracker::observe`] without recording it).
    pub fn is_late(&self, partition: u32, event_ms: i64) -> bool {
        self.max_ms(partition)
            .is_some_and(|max| event_ms < max - self.lateness_ms)
    }

    /// Resumes `partition` with the clock it had at a checkpoint: `max_ms` is its largest
    /// event time before the offset reading resumes at, so lateness is judged exactly as
    /// before the restart.
    pub fn restore(&mut self, partition: u32, max_ms: Option<i64>, now: Instant) {
        self.add_partition(partition, now);
        self.partitions.get_mut(&partition).expect("added").max_ms = max_ms;
    }

    /// `partition`'s largest event time read so far.
    pub fn max_ms(&self, partition: u32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|c| c.max_ms)
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

    /// Whether `partition` stops holding the watermark back: finished, or at its end offset
    /// and quiet for the idle timeout (the rule [`WatermarkTracker::local_marks`] applies).
    pub fn is_idle(&self, partition: u32, now: Instant) -> bool {
        self.partitions.get(&partition).is_some_and(|clock| {
            clock.finished
                || (clock.at_end
                    && now.saturating_duration_since(clock.last_activity) >= self.idle_timeout)
        })
    }

    /// The job's watermark as last published (see [`WatermarkTracker::advance_to`]).
    pub fn published_ms(&self) -> Option<i64> {
        self.published_ms
    }

    /// The allowed lateness in milliseconds.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness_ms
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

    /// This tracker's contribution to the job's watermark (see [`LocalMarks`]).
    pub fn local_marks(&self, now: Instant) -> LocalMarks {
        let mut marks = LocalMarks::default();
        for clock in self.partitions.values() {
            let idle = clock.at_end
                && now.saturating_duration_since(clock.last_activity) >= self.idle_timeout;
            let mark = clock.max_ms.map(|max| max - self.lateness_ms);
            if clock.finished || idle {
                marks.largest_idle = marks.largest_idle.max(mark);
                continue;
            }
            match mark {
                None => marks.holding = true,
                Some(mark) => {
                    marks.least_active = Some(marks.least_active.map_or(mark, |l| l.min(mark)))
                }
            }
        }
        marks
    }

    /// Moves the published watermark up to `candidate` (never down) and returns it.
    pub fn advance_to(&mut self, candidate: Option<i64>) -> Option<i64> {
        if let Some(mark) = candidate {
            self.published_ms = Some(self.published_ms.map_or(mark, |p| p.max(mark)));
        }
        self.published_ms
    }

    /// The watermark of this tracker's partitions alone, in milliseconds, or `None` while
    /// it is unknown. Monotone: it never returns less than it returned before.
    pub fn watermark_ms(&mut self, now: Instant) -> Option<i64> {
        let marks = self.local_marks(now);
        self.advance_to(LocalMarks::combine([marks]))
    }
}

/// One tracker's (one worker's) part of the job's watermark.
///
/// The job's watermark is the minimum, over partitions that are neither idle nor finished,
/// of their largest event time minus the allowed lateness; an active partition that has read
/// nothing yet holds it where it is; when every partition is idle, nothing holds it back and
/// it rests at the largest mark any partition reached (so a burst followed by silence still
/// has its windows closed). Workers each own some partitions, so they combine their
/// `LocalMarks` to get the same job watermark: a worker whose partitions are all idle then
/// follows the others instead of holding the whole job back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalMarks {
    /// An active partition has read nothing yet.
    pub holding: bool,
    /// The least mark of the active partitions.
    pub least_active: Option<i64>,
    /// The largest mark of the idle or finished partitions.
    pub largest_idle: Option<i64>,
}

impl LocalMarks {
    /// The job's watermark from every part, or `None` when it cannot move now.
    pub fn combine(parts: impl IntoIterator<Item = LocalMarks>) -> Option<i64> {
        let (mut least, mut largest_idle) = (None::<i64>, None::<i64>);
        for part in parts {
            if part.holding {
                return None;
            }
            if let Some(mark) = part.least_active {
                least = Some(least.map_or(mark, |l| l.min(mark)));
            }
            largest_idle = largest_idle.max(part.largest_idle);
        }
        least.or(largest_idle)
    }
}

/// One worker's [`LocalMarks`] as posted to a [`MarksBoard`]; the source also sends it to the
/// workers of the other processes, whose boards record it too. `seq` grows with every post
/// of that worker, so a board never goes back to an older post that arrives late.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarksPost {
    /// The worker's index in the whole job.
    pub worker: usize,
    /// The worker's post counter.
    pub seq: u64,
    /// Its marks.
    pub marks: LocalMarks,
}

/// Every worker's newest [`LocalMarks`], from which each worker reads the job's watermark.
/// The workers of a process share one board; posts of other processes' workers reach it
/// through the dataflow (see the Kafka source), so the watermark is the job's, not the
/// process's.
#[derive(Debug)]
pub struct MarksBoard {
    parts: std::sync::Mutex<Vec<Option<(u64, LocalMarks)>>>,
}

impl MarksBoard {
    /// A board for `workers` workers (in the whole job); a worker counts once it has posted.
    pub fn new(workers: usize) -> MarksBoard {
        MarksBoard {
            parts: std::sync::Mutex::new(vec![None; workers]),
        }
    }

    /// Records `post` unless the board holds a newer one from the same worker.
    pub fn record(&self, post: MarksPost) {
        let mut parts = self.parts.lock().expect("not poisoned");
        let slot = &mut parts[post.worker];
        if slot.is_none_or(|(seq, _)| seq < post.seq) {
            *slot = Some((post.seq, post.marks));
        }
    }

    /// The job's watermark candidate: `None` until every worker has posted, or while one is
    /// holding.
    pub fn candidate(&self) -> Option<i64> {
        let parts = self.parts.lock().expect("not poisoned");
        if parts.iter().any(Option::is_none) {
            return None;
        }
        LocalMarks::combine(parts.iter().flatten().map(|(_, marks)| *marks))
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
    fn a_partition_is_idle_at_its_end_after_the_timeout_or_when_finished() {
        let (mut t, now) = tracker();
        t.observe(0, 100_000, now);
        t.add_partition(1, now);
        assert!(!t.is_idle(0, now) && !t.is_idle(1, now) && !t.is_idle(9, now));
        t.set_at_end(0, true, now);
        assert!(!t.is_idle(0, now + Duration::from_millis(4_999)));
        assert!(t.is_idle(0, now + Duration::from_secs(5)));
        t.observe(0, 100_001, now + Duration::from_secs(6));
        assert!(!t.is_idle(0, now + Duration::from_secs(20)), "new data");
        t.finish(1);
        assert!(t.is_idle(1, now));
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
    fn when_every_partition_is_idle_the_watermark_rests_at_the_largest_mark() {
        let (mut t, now) = tracker();
        t.observe(0, 600_000, now);
        t.add_partition(1, now);
        t.add_partition(2, now);
        t.set_at_end(1, true, now);
        t.set_at_end(2, true, now);
        assert_eq!(
            t.watermark_ms(now),
            None,
            "empty partitions hold until quiet for the timeout"
        );
        let quiet = now + Duration::from_secs(5);
        assert_eq!(
            t.watermark_ms(quiet),
            Some(570_000),
            "then only partition 0 counts"
        );
        // Partition 0 goes quiet too: every partition idle, the watermark stays.
        t.set_at_end(0, true, quiet);
        let later = quiet + Duration::from_secs(5);
        assert_eq!(t.watermark_ms(later), Some(570_000));
        t.observe(1, 100_000, later);
        assert_eq!(
            t.watermark_ms(later),
            Some(570_000),
            "a returning partition cannot pull it back"
        );
    }

    #[test]
    fn a_worker_whose_partitions_are_all_idle_follows_the_others() {
        let (mut busy, now) = tracker();
        let (mut quiet, _) = tracker();
        busy.observe(1, 600_000, now);
        quiet.add_partition(0, now);
        quiet.set_at_end(0, true, now);
        let board = MarksBoard::new(2);
        let post = |board: &MarksBoard, worker, seq, marks| {
            board.record(MarksPost { worker, seq, marks });
            board.candidate()
        };
        assert_eq!(
            post(&board, 0, 1, quiet.local_marks(now)),
            None,
            "worker 1 has not posted"
        );
        let later = now + Duration::from_secs(5);
        assert_eq!(
            post(&board, 1, 1, busy.local_marks(later)),
            None,
            "worker 0 was holding when it posted"
        );
        assert_eq!(post(&board, 0, 2, quiet.local_marks(later)), Some(570_000));
        // An older post arriving late (from another process) changes nothing.
        assert_eq!(post(&board, 0, 1, quiet.local_marks(now)), Some(570_000));
        assert_eq!(quiet.advance_to(Some(570_000)), Some(570_000));
        assert_eq!(quiet.advance_to(Some(10)), Some(570_000), "never backwards");
        // A worker with an active partition that has read nothing holds everyone.
        quiet.add_partition(2, later);
        assert_eq!(post(&board, 0, 3, quiet.local_marks(later)), None);
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
