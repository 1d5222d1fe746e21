//! ridepulse's pure core: the data contract and the dataflow graphs, with no I/O.
//!
//! Everything in this crate runs on in-memory inputs, so that the numbers the ops team sees
//! can be checked against an independent recomputation without a broker or a database.
//! The connectors (Kafka, ClickHouse) live in the `ridepulse` package and feed these graphs.
//!
//! ```text
//!  partitions ──► source (per worker: its partitions, lateness per partition,
//!                 capability = watermark minute)
//!                   │ SourcedEvent at time = event minute (late: at the capability)
//!                   ├──────────────► late events
//!                   ▼ exchange by (city, rider)
//!                 RiderPartials (per worker: its riders' counts per city and minute)
//!                   ▼ exchange by city: one delta per city and minute per flush
//!                 CityWindows (minute buckets; final when the frontier passes a window's
//!                 end; updates at most once per emit interval) ──► CityMetricsRow,
//!                 CityMinuteRow (per-minute rollups)
//!
//!  ride events ─┬─► (the stream above)
//!  locations ───┴─► supply: latest ride / driver state, a differential reduce of counts per
//!                   city (final when both topics' frontiers pass a minute) and a live view
//!                   of the open minutes ──► CitySupplyRow (SPEC §5)
//! ```
//!
//! A tour:
//! - [`event`]: ride events and driver locations exactly as SPEC §2 defines them, with
//!   parsing that names the field at fault (the text goes into dead-letter headers);
//!   `event_scan` reads the common shape of a ride event in one pass.
//! - [`watermark`]: per-partition event-time clocks: lateness and the watermark (SPEC §3).
//! - [`partitioned_source`]: the source over in-memory partitions, and [`partitioned_source::EventStamper`],
//!   the emission rule every source shares.
//! - [`city_metrics`]: the sliding windows: `window_partials` counts each worker's share of
//!   the riders (in a `rider_table` per city, whose slots a batch reads ahead of its
//!   lookups), `city_windows` sums the shares per city and makes the rows; `inline_name`
//!   keeps the riders' and cities' ids off the heap on that path.
//! - [`metrics_row`]: the output row of SPEC §4.
//! - [`minute_row`]: the per-minute rollup row (`city_minutes`) the dashboards read, from
//!   the same minute buckets as the windows.
//! - [`supply`]: live supply and demand per city (SPEC §5) on differential dataflow: the
//!   latest state of every ride and driver, counts per city, final rows per minute; with
//!   [`supply_live`] (the open minutes, hand-written) and [`supply_rows`] (update mode);
//!   `supply_split` hands each of its consumers what it needs of a record in one pass, and
//!   `latest_state` keeps every ride's and driver's latest reading and sends their per-city
//!   tallies to the per-city reduce.
//! - [`supply_row`]: the output row of SPEC §5.
//! - [`split`]: one stream into two, each record moved once (the sources' outputs into
//!   views and sinks, on-time and late events).
//! - `frontier_capability`: the rule the window and supply-row operators share for their
//!   one capability (it follows the input frontier, so finality follows the watermark).
#![deny(missing_docs)]

pub mod city_metrics;
mod city_windows;
mod entity_key;
pub mod event;
mod event_scan;
mod frontier_capability;
mod inline_name;
mod latest_state;
pub mod metrics_row;
pub mod minute_row;
pub mod partitioned_source;
mod rider_table;
pub mod split;
pub mod supply;
pub mod supply_live;
pub mod supply_row;
pub mod supply_rows;
mod supply_split;
pub mod watermark;
mod window_partials;
