//! The rollup sink: every per-minute rollup row (updates and finals) upserted into
//! `city_minutes` (ReplacingMergeTree by `version`: a final row outranks every update of its
//! minute, and a re-emitted final row is identical). Its durable frontier joins the other
//! sinks' in the probe the checkpoints wait for, so no checkpoint passes a rollup row that
//! is not durable yet, and a restart re-emits every minute that might be missing.

use std::sync::Arc;

use dataflows::minute_row::CityMinuteRow;
use timely::dataflow::StreamVec;

use super::durable::durable_sink;
use crate::clickhouse::writer::{Batch, Writer};

/// Writes the rollup rows; the result's frontier says which minutes are durable.
pub fn minutes_sink<'scope>(
    rows: StreamVec<'scope, u64, CityMinuteRow>,
    writer: Arc<Writer>,
) -> StreamVec<'scope, u64, ()> {
    durable_sink(
        rows,
        "MinutesSink",
        writer,
        |minutes: Vec<CityMinuteRow>| {
            (
                Batch {
                    minutes,
                    ..Batch::default()
                },
                (),
            )
        },
        |()| {},
    )
}
