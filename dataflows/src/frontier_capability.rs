//! The rule the window and supply-row operators share for their one capability: it follows
//! the operator's input frontier and is dropped when the input is done. So the operator's
//! output frontier is its input frontier, and finality downstream follows the sources'
//! watermark exactly (the bound the sinks' durable frontier and the checkpoints rely on).

use timely::dataflow::operators::Capability;

/// Moves `capability` up to `frontier` (the least time the input can still bring), or drops
/// it when the input is done (`None`).
pub(crate) fn follow(capability: &mut Option<Capability<u64>>, frontier: Option<u64>) {
    match frontier {
        Some(time) => {
            if let Some(capability) = capability.as_mut() {
                if time > *capability.time() {
                    capability.downgrade(&time);
                }
            }
        }
        None => *capability = None,
    }
}
