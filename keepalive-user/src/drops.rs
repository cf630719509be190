//! What the outputs could not take: their drop counters into the stats line, and a warning on
//! standard error whenever an output dropped more since the last look.

use keepalive_observer::{queue::DropCounter, sink::LossReport};

/// The outputs' drop counters, by output name (`stdout`, `journald`, `recording`).
#[derive(Default)]
pub struct Drops {
    outputs: Vec<(&'static str, DropCounter, u64)>,
}

impl Drops {
    /// Watches `counter` as the output `name`.
    pub fn watch(&mut self, name: &'static str, counter: DropCounter) {
        self.outputs.push((name, counter, 0));
    }

    /// Copies the counts into `loss`; warns about the outputs that dropped more since the
    /// last call.
    pub fn update(&mut self, loss: &mut LossReport) {
        for (name, counter, warned) in &mut self.outputs {
            let dropped = counter.get();
            loss.output_dropped.insert(name, dropped);
            if dropped > *warned {
                tracing::warn!(
                    "{name} could not keep up: {dropped} record(s) dropped so far ({} since \
                     the last report), counted in the stats line as dropped_by_{name}",
                    dropped - *warned
                );
                *warned = dropped;
            }
        }
    }
}
