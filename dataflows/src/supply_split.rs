//! One pass over a topic's sourced records that hands each consumer of the supply dataflow
//! only what it needs, instead of a copy of the stream per consumer.
//!
//! Timely clones a stream's records for every extra consumer, and a ride event is six
//! strings: with four consumers (late records, per-entity readings, per-city tallies, the
//! live view) each event was copied three times whole. This operator moves each record once
//! into four outputs: the late ones as [`LateEvent`]s, and for the on-time ones the entity's
//! [`Reading`] (key and reading), the per-city tally updates (a record's `Event` tally for
//! `[e, e + H)` and a `requested` event's `Request` tally for `[e, e + 1)`, as differential
//! updates), and a [`LiveRecord`] for the live view (only when it is built).

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::StreamVec;

use crate::city_metrics::LateEvent;
use crate::entity_key::EntityKey;
use crate::event::{DriverLocation, EventType, RideEvent};
use crate::partitioned_source::{minute_of, Sourced};
use crate::supply::{Reading, Tally};

/// A record of one entity as the live view keeps it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct LiveRecord {
    /// The ride or driver.
    pub key: EntityKey,
    /// Its reading.
    pub reading: Reading,
    /// Whether it is a `requested` ride event.
    pub requested: bool,
}

/// What the supply dataflow reads of a record type.
pub(crate) trait SupplyInput: Sized + 'static {
    /// The entity (ride or driver) the record belongs to.
    fn key(&self) -> &str;
    /// Whether it is a `requested` ride event.
    fn requested(&self) -> bool;
    /// The record reduced to what its entity's state needs.
    fn reading(sourced: &Sourced<Self>) -> Reading;
    /// The record as a late one.
    fn late(self) -> LateEvent;
}

impl SupplyInput for RideEvent {
    fn key(&self) -> &str {
        &self.ride_id
    }
    fn requested(&self) -> bool {
        self.event_type == EventType::Requested
    }
    fn reading(sourced: &Sourced<Self>) -> Reading {
        Reading::of_ride(sourced)
    }
    fn late(self) -> LateEvent {
        LateEvent {
            city: self.city.into_string(),
            timestamp: self.timestamp,
        }
    }
}

impl SupplyInput for DriverLocation {
    fn key(&self) -> &str {
        &self.driver_id
    }
    fn requested(&self) -> bool {
        false
    }
    fn reading(sourced: &Sourced<Self>) -> Reading {
        Reading::of_driver(sourced)
    }
    fn late(self) -> LateEvent {
        LateEvent {
            city: self.city,
            timestamp: self.timestamp,
        }
    }
}

/// A per-city tally update: `((city, tally), time, diff)`.
pub(crate) type TallyUpdate = ((String, Tally), u64, isize);

/// The four outputs of [`build`].
pub(crate) struct Split<'scope> {
    pub late: StreamVec<'scope, u64, LateEvent>,
    pub readings: StreamVec<'scope, u64, (EntityKey, Reading)>,
    pub tallies: StreamVec<'scope, u64, TallyUpdate>,
    pub live: StreamVec<'scope, u64, LiveRecord>,
}

/// Splits `records` (at their event minute; late ones at the source's capability) with
/// records present in the per-city counts for `horizon` minutes; `live` says whether the
/// live view is built (otherwise its output stays empty).
pub(crate) fn build<'scope, R: SupplyInput>(
    records: StreamVec<'scope, u64, Sourced<R>>,
    horizon: u64,
    live: bool,
    name: &str,
) -> Split<'scope> {
    let mut builder = OperatorBuilder::new(name.to_owned(), records.scope());
    let mut input = builder.new_input(records, Pipeline);
    let (late_out, late) = builder.new_output::<Vec<LateEvent>>();
    let (readings_out, readings) = builder.new_output::<Vec<(EntityKey, Reading)>>();
    let (tallies_out, tallies) = builder.new_output::<Vec<TallyUpdate>>();
    let (live_out, live_stream) = builder.new_output::<Vec<LiveRecord>>();
    let mut late_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(late_out);
    let mut readings_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(readings_out);
    let mut tallies_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(tallies_out);
    let mut live_out = OutputBuilder::<_, CapacityContainerBuilder<_>>::from(live_out);
    builder.build(move |_capabilities| {
        move |_frontiers| {
            let mut late_out = late_out.activate();
            let mut readings_out = readings_out.activate();
            let mut tallies_out = tallies_out.activate();
            let mut live_out = live_out.activate();
            input.for_each(|capability, data| {
                let mut late = late_out.session(&capability);
                let mut readings = readings_out.session(&capability);
                let mut tallies = tallies_out.session(&capability);
                let mut lives = live_out.session(&capability);
                for sourced in data.drain(..) {
                    if sourced.late {
                        late.give(sourced.event.late());
                        continue;
                    }
                    let reading = R::reading(&sourced);
                    let minute = minute_of(reading.ts);
                    let requested = sourced.event.requested();
                    let city = &reading.city;
                    if requested {
                        tallies.give(((city.clone(), Tally::Request), minute, 1));
                        tallies.give(((city.clone(), Tally::Request), minute + 1, -1));
                    }
                    tallies.give(((city.clone(), Tally::Event), minute, 1));
                    tallies.give(((city.clone(), Tally::Event), minute + horizon, -1));
                    let key = EntityKey::new(sourced.event.key());
                    if live {
                        lives.give(LiveRecord {
                            key: key.clone(),
                            reading: reading.clone(),
                            requested,
                        });
                    }
                    readings.give((key, reading));
                }
            });
        }
    });
    Split {
        late,
        readings,
        tallies,
        live: live_stream,
    }
}
