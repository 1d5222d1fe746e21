//! What the job's two sources share: the Kafka source (`kafka::source`, a live topic or a
//! backlog) and the file source ([`file`], `run --from-file`) read records in different
//! ways and hand the dataflow the same stream, so the parts they have in common live here,
//! each named, rather than in one operator closure that the other repeats:
//!
//! - [`record`]: what a source reads ([`SourceRecord`]: ride events, driver locations) and
//!   what it emits ([`Ingested`]: valid, replayed, settled records and dead letters).
//! - [`stamp`]: one read message to a judged record or a dead letter: lateness per
//!   partition, the city filter, the counters and the invalid-message log.
//! - [`checkpoint`]: where a restart resumes ([`Resume`]), the per-partition bookkeeping a
//!   checkpoint is made from, and the ingest sink's durable offsets it waits for.
//! - [`counters`]: the counters and shared handles of a process's sources.
//! - [`pending`]: an activation's records, sent as one container per timely time.
//! - [`line_chunks`]: a file run's lines, each read by one worker and handed to the owner
//!   of its partition.
//! - [`file`]: the file source.
//!
//! Dependencies run one way: the sources and the ingest sink (`sinks::ingest`) import this
//! module, and it imports neither.

pub mod checkpoint;
pub mod counters;
pub mod file;
pub mod line_chunks;
pub mod pending;
pub mod record;
pub mod stamp;

pub use checkpoint::{IngestProgress, Resume};
pub use counters::{owns, SourceCounters, SourceShared};
pub use record::{Ingested, SourceRecord};
pub use stamp::{Judged, Stamping};
