//! The metrics sink: every emitted row (updates and finals) upserted into `city_metrics`
//! (ReplacingMergeTree by `version`: a final row outranks every update of its window) and
//! sent as JSON to `analytics-aggregated`, keyed by city.

use std::sync::Arc;

use dataflows::metrics_row::CityMetricsRow;
use timely::dataflow::StreamVec;

use super::durable::durable_sink;
use crate::clickhouse::writer::{Batch, Writer};

/// Writes the metric rows; the result's frontier says which minutes are durable.
pub fn metrics_sink<'scope>(
    rows: StreamVec<'scope, u64, CityMetricsRow>,
    writer: Arc<Writer>,
) -> StreamVec<'scope, u64, ()> {
    durable_sink(
        rows,
        "MetricsSink",
        writer,
        |metrics: Vec<CityMetricsRow>| {
            (
                Batch {
                    metrics,
                    ..Batch::default()
                },
                (),
            )
        },
        |()| {},
    )
}
