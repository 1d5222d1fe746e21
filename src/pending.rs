//! Records a source reads in one activation, sent as one container per timely time.
//!
//! Both sources (`file_source`, `kafka::source`) read a few thousand records per activation,
//! nearly all in the same event minute. Giving each to its own output session, at its own
//! capability, cost the file source ~15 % of its time (a capability made and dropped, a
//! session opened and flushed, and the record copied into the session's buffer, per record);
//! here consecutive records of one time are collected and handed over as one container.

use dataflows::partitioned_source::EventStamper;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilderSession;

/// What an activation has read and not yet sent: records of one time.
pub struct Pending<D> {
    time: u64,
    capacity: usize,
    records: Vec<D>,
}

/// A source's data output during an activation.
pub type Output<'a, D> = OutputBuilderSession<'a, u64, CapacityContainerBuilder<Vec<D>>>;

impl<D: 'static> Pending<D> {
    /// Collects up to `capacity` records before a container is allocated anew.
    pub fn with_capacity(capacity: usize) -> Pending<D> {
        Pending {
            time: 0,
            capacity,
            records: Vec::with_capacity(capacity),
        }
    }

    /// Adds a record to send at `time`, a time `stamper` gave since its last advance
    /// (sending what is pending first if that is of another time).
    pub fn push(
        &mut self,
        time: u64,
        record: D,
        stamper: &EventStamper,
        output: &mut Output<'_, D>,
    ) {
        if time != self.time {
            self.send(stamper, output);
            self.time = time;
        }
        self.records.push(record);
    }

    /// Sends what is pending; must come before the stamper's capability moves on.
    pub fn send(&mut self, stamper: &EventStamper, output: &mut Output<'_, D>) {
        if !self.records.is_empty() {
            let capability = stamper.capability_at(self.time);
            output
                .session(&capability)
                .give_container(&mut self.records);
            self.records = Vec::with_capacity(self.capacity);
        }
    }
}
