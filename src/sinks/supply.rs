//! The supply sink: every emitted supply row (updates and finals, SPEC §5) upserted into
//! `city_supply` (ReplacingMergeTree by `version`: a final row outranks every update of its
//! minute) and sent as JSON to `city-supply`, keyed by city. Its durable frontier joins the
//! other sinks' in the probe the checkpoints wait for, so no checkpoint passes a supply row
//! that is not durable yet.

use std::sync::Arc;

use dataflows::supply_row::CitySupplyRow;
use timely::dataflow::StreamVec;

use super::durable::durable_sink;
use crate::clickhouse::writer::{Batch, Writer};

/// Writes the supply rows; the result's frontier says which minutes are durable.
pub fn supply_sink<'scope>(
    rows: StreamVec<'scope, u64, CitySupplyRow>,
    writer: Arc<Writer>,
) -> StreamVec<'scope, u64, ()> {
    durable_sink(
        rows,
        "SupplySink",
        writer,
        |supply: Vec<CitySupplyRow>| {
            (
                Batch {
                    supply,
                    ..Batch::default()
                },
                (),
            )
        },
        |()| {},
    )
}
