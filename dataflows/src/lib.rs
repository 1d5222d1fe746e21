//! ridepulse's pure core: the data contract and the dataflow graphs, with no I/O.
//!
//! Everything in this crate runs on in-memory inputs, so that the numbers the ops team sees
//! can be checked against an independent recomputation without a broker or a database.
//! The connectors (Kafka, ClickHouse) live in the `ridepulse` package and feed these graphs.
//!
//! A tour:
//! - [`event`]: ride events and driver locations exactly as SPEC §2 defines them, with
//!   parsing that names the field at fault (the text goes into dead-letter headers).
#![deny(missing_docs)]

pub mod event;
