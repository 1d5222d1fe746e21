//! Records a source reads in one activation, sent as one container per timely time.
//!
//! Both sources (`source::file`, `kafka::source`) read a few thousand records per activation,
//! nearly all in the same event minute. Giving each to its own output session, at its own
//! capability, cost the file source ~15 % of its time (a capability made and dropped, a
//! session opened and flushed, and the record copied into the session's buffer, per record);
//! here consecutive records of one time are collected and handed over as one container.

use dataflows::partitioned_source::EventStamper;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::OutputBuilderSession;

/// What an activation has read and not yet sent: records of one time. Kept across
/// activations, so each container is allocated as large as the previous one was: a busy
/// source fills a few thousand records at once, a live one a handful.
pub struct Pending<D> {
    time: u64,
    records: Vec<D>,
}

/// The smallest container allocated.
const MIN_CAPACITY: usize = 16;

/// A source's data output during an activation.
pub type Output<'a, D> = OutputBuilderSession<'a, u64, CapacityContainerBuilder<Vec<D>>>;

impl<D: 'static> Default for Pending<D> {
    fn default() -> Self {
        Pending::new()
    }
}

impl<D: 'static> Pending<D> {
    /// Nothing pending.
    pub fn new() -> Pending<D> {
        Pending {
            time: 0,
            records: Vec::with_capacity(MIN_CAPACITY),
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
            let sent = self.records.len();
            let capability = stamper.capability_at(self.time);
            output
                .session(&capability)
                .give_container(&mut self.records);
            self.records = Vec::with_capacity(sent.max(MIN_CAPACITY));
        }
    }
}
