//! A timely source over in-memory partitions: the test and benchmark input, and the shape
//! every real source (files, Kafka) follows.
//!
//! Each worker owns the partitions `p` with `p % peers == index`, reads them in order in
//! bounded round-robin batches, judges lateness with a [`WatermarkTracker`], and emits
//! [`Sourced`] records through [`EventStamper`]: on-time records at their event minute, late
//! ones at the held capability. Its capability follows the watermark; a finished partition stops
//! holding it, and when all are finished the capability is dropped (the `--until-end`
//! semantics: every window becomes final).
//!
//! The machinery is generic over the record read ([`EventTime`]): ride events
//! ([`SourcedEvent`]) and driver locations ([`SourcedLocation`]) share it, and each topic's
//! source has its own tracker, so a location is judged late against its own partition of
//! `driver-locations` only (SPEC §3's rule, applied per partition of each topic).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::Capability;
use timely::dataflow::{Scope, StreamVec};

use crate::event::{DriverLocation, RideEvent};
use crate::watermark::{MarksBoard, MarksPost, WatermarkTracker};

/// A record with an event time: what a source needs to judge lateness and stamp it.
pub trait EventTime {
    /// The event time in milliseconds since the Unix epoch.
    fn event_ms(&self) -> i64;
}

impl EventTime for RideEvent {
    fn event_ms(&self) -> i64 {
        self.timestamp.millis()
    }
}

impl EventTime for DriverLocation {
    fn event_ms(&self) -> i64 {
        self.timestamp.millis()
    }
}

/// A valid record as a source read it, with where it came from and the lateness verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sourced<R> {
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// The record (named `event` for every kind: a ride event or a driver location).
    pub event: R,
    /// SPEC §3's verdict, judged against the record's own partition: a late record adds to
    /// no window and changes no state.
    pub late: bool,
}

/// A ride event as read from `ride-events`.
pub type SourcedEvent = Sourced<RideEvent>;

/// A driver location as read from `driver-locations`.
pub type SourcedLocation = Sourced<DriverLocation>;

/// The minute (timely timestamp) of an event time in milliseconds.
pub fn minute_of(ms: i64) -> u64 {
    ms.div_euclid(60_000).max(0) as u64
}

/// Decides the timely time each event is emitted at, and keeps a source's capability at
/// the watermark. Shared by every source.
pub struct EventStamper {
    /// Per-partition clocks.
    pub tracker: WatermarkTracker,
    capability: Option<Capability<u64>>,
    /// Posts made to a [`MarksBoard`] so far.
    posts: u64,
}

impl EventStamper {
    /// Wraps a source's initial capability.
    pub fn new(tracker: WatermarkTracker, capability: Capability<u64>) -> EventStamper {
        EventStamper {
            tracker,
            capability: Some(capability),
            posts: 0,
        }
    }

    /// The capability held, if any.
    pub fn capability(&self) -> Option<&Capability<u64>> {
        self.capability.as_ref()
    }

    /// Judges an event read from `partition` and returns it with the capability to send it
    /// at: its own minute when on time, the held capability when late (per-partition rule,
    /// or a minute that is already final, which happens only to a partition that was idle).
    pub fn stamp<R: EventTime>(
        &mut self,
        partition: u32,
        offset: u64,
        event: R,
        now: Instant,
    ) -> (Capability<u64>, Sourced<R>) {
        let (time, sourced) = self.judge(partition, offset, event, now);
        (self.capability_at(time), sourced)
    }

    /// [`EventStamper::stamp`] without the capability: the time to send the event at. A
    /// source that batches events of one time asks [`EventStamper::capability_at`] once per
    /// batch, which must be before the next `advance` (a capability per event cost a file
    /// run ~5 % of its time).
    pub fn judge<R: EventTime>(
        &mut self,
        partition: u32,
        offset: u64,
        event: R,
        now: Instant,
    ) -> (u64, Sourced<R>) {
        let held = *self
            .capability
            .as_ref()
            .expect("a source stamps only while it holds a capability")
            .time();
        let millis = event.event_ms();
        let mut late = self.tracker.observe(partition, millis, now);
        let minute = minute_of(millis);
        if minute < held {
            late = true;
        }
        let time = if late { held } else { minute };
        (
            time,
            Sourced {
                partition,
                offset,
                event,
                late,
            },
        )
    }

    /// A capability for `time`, which [`EventStamper::judge`] gave since the last advance.
    pub fn capability_at(&self, time: u64) -> Capability<u64> {
        let held = self
            .capability
            .as_ref()
            .expect("a source stamps only while it holds a capability");
        if time == *held.time() {
            held.clone()
        } else {
            held.delayed(&time)
        }
    }

    /// Moves the capability up to the watermark's minute (this source's partitions alone);
    /// drops it when every partition is finished. Returns whether a capability is still held.
    pub fn advance(&mut self, now: Instant) -> bool {
        let mark = self.tracker.watermark_ms(now);
        self.advance_to(mark)
    }

    /// Like [`EventStamper::advance`], with the job's watermark combined through a
    /// [`MarksBoard`] shared by the workers of this process.
    pub fn advance_shared(&mut self, now: Instant, board: &MarksBoard, worker: usize) -> bool {
        self.post_marks(now, board, worker);
        self.advance_from(board)
    }

    /// Posts this source's marks to `board` as `worker` and returns the post, for the
    /// boards of other processes.
    pub fn post_marks(&mut self, now: Instant, board: &MarksBoard, worker: usize) -> MarksPost {
        self.posts += 1;
        let post = MarksPost {
            worker,
            seq: self.posts,
            marks: self.tracker.local_marks(now),
        };
        board.record(post);
        post
    }

    /// Moves the capability up to the job's watermark as `board` has it (see
    /// [`EventStamper::advance`]).
    pub fn advance_from(&mut self, board: &MarksBoard) -> bool {
        let mark = self.tracker.advance_to(board.candidate());
        self.advance_to(mark)
    }

    fn advance_to(&mut self, mark: Option<i64>) -> bool {
        if self.tracker.all_finished() {
            self.capability = None;
            return false;
        }
        if let (Some(capability), Some(mark)) = (self.capability.as_mut(), mark) {
            let minute = minute_of(mark);
            if minute > *capability.time() {
                capability.downgrade(&minute);
            }
        }
        self.capability.is_some()
    }
}

/// How the in-memory source reads.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// SPEC §3's allowed lateness.
    pub allowed_lateness: Duration,
    /// Events read from one partition per turn (varies the read interleaving in tests).
    pub batch: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            allowed_lateness: Duration::from_secs(30),
            batch: 1024,
        }
    }
}

/// A source reading `partitions[p]` (in order) as partition `p`; this worker reads those
/// with `p % peers == index`. Works for ride events and driver locations alike; a dataflow
/// reading both topics builds one source per topic, each with its own partitions and clocks.
pub fn replay<'scope, R>(
    scope: Scope<'scope, u64>,
    partitions: &[Vec<R>],
    config: ReplayConfig,
) -> StreamVec<'scope, u64, Sourced<R>>
where
    R: EventTime + Clone + 'static,
{
    let (index, peers) = (scope.index(), scope.peers());
    let mut mine: Vec<(u32, std::vec::IntoIter<R>, u64)> = partitions
        .iter()
        .enumerate()
        .filter(|(p, _)| p % peers == index)
        .map(|(p, events)| (p as u32, events.clone().into_iter(), 0))
        .collect();
    source(scope, "ReplaySource", move |capability, info| {
        let activator = scope.activator_for(info.address);
        let now = Instant::now();
        // Idleness never applies: in-memory partitions are read to their end, then finished.
        let mut tracker = WatermarkTracker::new(config.allowed_lateness, Duration::MAX);
        for (p, _, _) in &mine {
            tracker.add_partition(*p, now);
        }
        let mut stamper = EventStamper::new(tracker, capability);
        move |output| {
            if stamper.capability().is_none() {
                return;
            }
            let now = Instant::now();
            for (partition, events, offset) in mine.iter_mut() {
                for event in events.by_ref().take(config.batch) {
                    let (capability, sourced) = stamper.stamp(*partition, *offset, event, now);
                    output.session(&capability).give(sourced);
                    *offset += 1;
                }
                if events.len() == 0 {
                    stamper.tracker.finish(*partition);
                }
            }
            if stamper.advance(now) {
                activator.activate();
            }
        }
    })
    .container::<Vec<_>>()
}
