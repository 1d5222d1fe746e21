//! The shape every sink shares: batch, submit, hold a capability until durable.
//!
//! Batches go to the writer when the input frontier moves (a frontier step), when they reach
//! [`MAX_BATCH`] rows, or when their oldest row has waited [`MAX_AGE`] — so a live job's
//! rows reach ClickHouse within a fraction of a second and a catch-up writes large blocks.
//! Each submitted batch keeps a capability at its earliest time until its ticket is done;
//! the writer wakes the operator then. The operator's output carries no data: its frontier
//! *is* the durable frontier.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::clickhouse::writer::{Batch, Ticket, Writer};

/// Rows per batch at most (one ClickHouse block, one INSERT).
pub const MAX_BATCH: usize = 50_000;
/// How long a row may wait for its batch to fill.
pub const MAX_AGE: Duration = Duration::from_millis(200);

/// Rows collected for the next batch, with a capability at their earliest time.
struct Pending<D> {
    data: Vec<D>,
    capability: Option<Capability<u64>>,
    since: Option<Instant>,
}

/// A batch the writer has not confirmed yet.
struct InFlight<A> {
    ticket: Ticket,
    /// Held so the durable frontier cannot pass this batch's rows.
    _capability: Capability<u64>,
    /// What to report once durable.
    receipt: A,
}

/// A sink operator: `prepare` turns collected rows into a writer batch and a receipt;
/// `durable` is called with each receipt, in order, once its batch is durable. Returns the
/// empty stream whose frontier is the durable frontier.
pub fn durable_sink<'scope, D, A, P, K>(
    stream: StreamVec<'scope, u64, D>,
    name: &str,
    writer: Arc<Writer>,
    mut prepare: P,
    mut durable: K,
) -> StreamVec<'scope, u64, ()>
where
    D: Clone + 'static,
    A: 'static,
    P: FnMut(Vec<D>) -> (Batch, A) + 'static,
    K: FnMut(A) + 'static,
{
    let scope = stream.scope();
    writer.open_sink();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        name,
        move |_capability, info| {
            let activator = scope.activator_for(info.address.clone());
            let wake = scope.worker().sync_activator_for(info.address.to_vec());
            let mut pending = Pending::<D> {
                data: Vec::new(),
                capability: None,
                since: None,
            };
            let mut in_flight: VecDeque<InFlight<A>> = VecDeque::new();
            let mut last_frontier: Option<u64> = Some(0);
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    let Some(time) = capability.least().copied() else {
                        return;
                    };
                    let earlier = pending
                        .capability
                        .as_ref()
                        .is_none_or(|held| time < *held.time());
                    if earlier {
                        pending.capability = Some(capability.delayed(&time, output.output_index()));
                    }
                    pending.since.get_or_insert_with(Instant::now);
                    pending.data.append(data);
                });
                // Confirmed batches, in order: report them and release their capabilities.
                while in_flight.front().is_some_and(|f| f.ticket.is_done()) {
                    let done = in_flight.pop_front().expect("front exists");
                    durable(done.receipt);
                }
                let now_frontier = frontier.frontier().first().copied();
                let stepped = now_frontier != last_frontier;
                last_frontier = now_frontier;
                if pending.data.is_empty() {
                    pending.capability = None;
                    if stepped && now_frontier.is_none() {
                        // The input closed after its last rows left, in a batch not marked
                        // last (the frontier was still open then): say so now, or the writer
                        // holds those rows for a whole write interval, waiting for more
                        // batches to merge (1 s at the end of a file run).
                        let end = Batch {
                            last: true,
                            ..Batch::default()
                        };
                        writer.submit(end, None);
                    }
                    return;
                }
                let aged = pending.since.is_some_and(|s| s.elapsed() >= MAX_AGE);
                if stepped || aged || pending.data.len() >= MAX_BATCH {
                    let data = std::mem::take(&mut pending.data);
                    let capability = pending.capability.take().expect("rows came with one");
                    pending.since = None;
                    let (mut batch, receipt) = prepare(data);
                    batch.last = now_frontier.is_none();
                    let ticket = writer.submit(batch, Some(wake.clone()));
                    in_flight.push_back(InFlight {
                        ticket,
                        _capability: capability,
                        receipt,
                    });
                } else if let Some(since) = pending.since {
                    activator.activate_after(MAX_AGE.saturating_sub(since.elapsed()));
                }
            }
        },
    )
}
