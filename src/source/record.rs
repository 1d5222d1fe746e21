//! The records a source reads and what it emits for them, shared by both sources and the
//! ingest sink.

use std::borrow::Cow;

use dataflows::event::{DriverLocation, EventError, RideEvent};
use dataflows::partitioned_source::{EventTime, Sourced};

use crate::clickhouse::writer::{Batch, DeadLetter};

/// A kind of input record: ride events or driver locations.
pub trait SourceRecord:
    EventTime + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// Whether valid records are written raw to ClickHouse (`ride_events`); locations are
    /// not (no table keeps them), so only their dead letters reach the ingest sink.
    const STORED: bool;
    /// Parses and validates a message value (SPEC §2).
    fn parse(bytes: &[u8]) -> Result<Self, EventError>;
    /// Its city (what a job's city set filters on).
    fn city(&self) -> &str;
    /// The Kafka key of a raw line (`ride_id`, `driver_id`), if it has one: which partition
    /// the producer gives it.
    fn key_of(line: &[u8]) -> Option<Cow<'_, str>>;
    /// The same key read from the parsed record: for every line that parses,
    /// `key_of(line) == Some(parse(line)?.key())` (the file source places a valid line by
    /// this, without scanning it again).
    fn key(&self) -> &str;
    /// Adds a valid record to a writer batch (a no-op unless [`SourceRecord::STORED`]).
    fn store(sourced: Sourced<Self>, batch: &mut Batch);
}

impl SourceRecord for RideEvent {
    const STORED: bool = true;
    fn parse(bytes: &[u8]) -> Result<Self, EventError> {
        RideEvent::parse(bytes)
    }
    fn city(&self) -> &str {
        &self.city
    }
    fn key_of(line: &[u8]) -> Option<Cow<'_, str>> {
        crate::kafka::partitioner::ride_id_key(line)
    }
    fn key(&self) -> &str {
        &self.ride_id
    }
    fn store(sourced: Sourced<Self>, batch: &mut Batch) {
        batch.events.push(sourced);
    }
}

impl SourceRecord for DriverLocation {
    const STORED: bool = false;
    fn parse(bytes: &[u8]) -> Result<Self, EventError> {
        DriverLocation::parse(bytes)
    }
    fn city(&self) -> &str {
        &self.city
    }
    fn key_of(line: &[u8]) -> Option<Cow<'_, str>> {
        crate::kafka::partitioner::driver_id_key(line)
    }
    fn key(&self) -> &str {
        &self.driver_id
    }
    fn store(_sourced: Sourced<Self>, _batch: &mut Batch) {}
}

/// What a source emits: every message of its partitions, in offset order per partition.
#[derive(Clone, Debug, PartialEq)]
pub enum Ingested<R = RideEvent> {
    /// A valid record, to be counted in windows (and, for ride events, written to
    /// `ride_events`).
    Event(Sourced<R>),
    /// A valid record re-read after a restart that is already written: it only rebuilds
    /// windows and supply state.
    Replayed(Sourced<R>),
    /// A valid record re-read after a restart that its partition's clock says is on time
    /// but whose minute is before the restart's first open minute: every window, minute
    /// and supply row it belongs to was final and durable before the restart, and counted
    /// it, so it goes to no view; its raw row (on time, as before) is written again only
    /// because the checkpoint cannot say it is durable (`ride_events` keeps one row per
    /// partition and offset).
    Settled(Sourced<R>),
    /// A message that is not a valid event, for the dead-letter topic.
    Dead(DeadLetter),
}

impl<R> Ingested<R> {
    /// Its partition and offset.
    pub fn position(&self) -> (u32, u64) {
        match self {
            Ingested::Event(e) | Ingested::Replayed(e) | Ingested::Settled(e) => {
                (e.partition, e.offset)
            }
            Ingested::Dead(d) => (d.partition, d.offset),
        }
    }

    /// The record, for the windows and the supply state.
    pub fn into_event(self) -> Option<Sourced<R>> {
        match self {
            Ingested::Event(e) | Ingested::Replayed(e) => Some(e),
            Ingested::Settled(_) | Ingested::Dead(_) => None,
        }
    }
}
