//! Keeps, per entity and event minute, only its latest reading, before the readings enter
//! differential's per-entity reduce: a local pre-aggregation (each worker on its own share,
//! before the exchange by key), the way a combiner thins a keyed aggregation.
//!
//! Exact for SPEC §5: every reading of an entity with event minute `e` is present in the
//! collection for the same minutes `[e, e + fresh_for)`, so at every one of them a later
//! reading of the same minute outranks an earlier one, which can never be the latest; the
//! reduce takes the maximum across workers. Readings are held until the input frontier
//! passes their minute — arrangements hold unsealed updates just as long — and then leave as
//! an insertion at `e` and a retraction at `e + fresh_for`. A driver reporting every 5 s sends
//! twelve locations a minute: one of them reaches the reduce.

use std::collections::{BTreeMap, HashMap};

/// A map with foldhash's fast hasher (see Cargo.toml).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::supply::Reading;

/// Per (entity, minute), the latest reading, present for `fresh_for` minutes from its
/// minute.
pub(crate) fn build<'scope>(
    readings: StreamVec<'scope, u64, (String, Reading)>,
    fresh_for: u64,
    name: &str,
) -> VecCollection<'scope, u64, (String, Reading)> {
    readings
        .unary_frontier(Pipeline, name, move |_capability, _info| {
            // Per event minute: the capability to send at, and each entity's latest reading.
            let mut stash: BTreeMap<u64, (Capability<u64>, FastMap<String, Reading>)> =
                BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    for (entity, reading) in data.drain(..) {
                        let minute = reading.minute();
                        let (_, latest) = stash.entry(minute).or_insert_with(|| {
                            (capability.delayed(&minute, 0), FastMap::default())
                        });
                        match latest.get_mut(&entity) {
                            Some(kept) => {
                                if reading > *kept {
                                    *kept = reading;
                                }
                            }
                            None => {
                                latest.insert(entity, reading);
                            }
                        }
                    }
                });
                while let Some(entry) = stash.first_entry() {
                    let minute = *entry.key();
                    if frontier.less_equal(&minute) {
                        break;
                    }
                    let (capability, latest) = entry.remove();
                    let mut session = output.session(&capability);
                    for (entity, reading) in latest {
                        session.give(((entity.clone(), reading.clone()), minute, 1isize));
                        session.give(((entity, reading), minute + fresh_for, -1isize));
                    }
                }
            }
        })
        .container::<Vec<_>>()
        .as_collection()
}
