//! The ingest sink: every valid event to `ride_events` (late ones with `is_late = 1`),
//! every dead letter to the dead-letter topic, and per partition the offset below which all
//! of it is durable (the source checkpoints no further than that). One per input topic and
//! worker: for `driver-locations` only dead letters are written (locations are not kept raw).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use dataflows::partitioned_source::Sourced;
use dataflows::split::{split, Side};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;

use super::durable::durable_sink;
use crate::clickhouse::writer::{Batch, Writer};
use crate::source::{IngestProgress, Ingested, SourceRecord};

/// Splits a source's output into the records the views read and what [`ingest_sink`] is
/// given. Records written raw (ride events with `raw`) go to both sides, which copies each
/// once; otherwise every item moves to one side only, once (see `dataflows::split`): valid
/// and replayed records to the views, dead letters to the sink (locations, and ride events
/// with `sinks.raw_events = false`, are never handed to the sink, see `kafka::source`).
pub fn split_ingested<'scope, R: SourceRecord>(
    ingested: StreamVec<'scope, u64, Ingested<R>>,
    raw: bool,
) -> (
    StreamVec<'scope, u64, Sourced<R>>,
    StreamVec<'scope, u64, Ingested<R>>,
) {
    if R::STORED && raw {
        let views = ingested.clone().flat_map(Ingested::into_event);
        return (views, ingested);
    }
    split(ingested, "SplitIngested", |item| match item {
        Ingested::Event(sourced) | Ingested::Replayed(sourced) => Side::Left(sourced),
        // Dead letters; settled records are handed only when written raw (not here).
        sink => Side::Right(sink),
    })
}

/// Writes `ingested` (this worker's source output, in offset order per partition); valid
/// records only when `raw` (`sinks.raw_events`) and their kind is stored at all.
pub fn ingest_sink<'scope, R: SourceRecord>(
    ingested: StreamVec<'scope, u64, Ingested<R>>,
    writer: Arc<Writer>,
    progress: Rc<RefCell<IngestProgress>>,
    raw: bool,
) -> StreamVec<'scope, u64, ()> {
    let store = R::STORED && raw;
    durable_sink(
        ingested,
        "IngestSink",
        writer,
        move |data: Vec<Ingested<R>>| {
            let mut batch = Batch::default();
            let mut reached: BTreeMap<u32, i64> = BTreeMap::new();
            for item in data {
                match item {
                    // Written before a restart, or never written (locations).
                    Ingested::Replayed(_) => continue,
                    Ingested::Event(_) | Ingested::Settled(_) if !store => continue,
                    _ => {}
                }
                let (partition, offset) = item.position();
                let next = reached.entry(partition).or_insert(0);
                *next = (*next).max(offset as i64 + 1);
                match item {
                    Ingested::Event(sourced) | Ingested::Settled(sourced) => {
                        R::store(sourced, &mut batch)
                    }
                    Ingested::Dead(dead) => batch.dead.push(dead),
                    Ingested::Replayed(_) => {}
                }
            }
            (batch, reached)
        },
        move |reached: BTreeMap<u32, i64>| {
            let mut progress = progress.borrow_mut();
            for (partition, next) in reached {
                progress.confirm(partition, next);
            }
        },
    )
}
