//! What the outputs could not take: their drop counters into the stats line, and a warning on
//! standard error when an output starts dropping and whenever its count has doubled since the
//! last warning (so that a stuck output costs a few lines, not one a second).

use keepalive_observer::{queue::DropCounter, sink::LossReport};

/// The outputs' drop counters, by output name (`stdout`, `journald`, `recording`, `stderr`).
#[derive(Default)]
pub struct Drops {
    outputs: Vec<(&'static str, DropCounter, u64)>,
}

impl Drops {
    /// Watches `counter` as the output `name`.
    pub fn watch(&mut self, name: &'static str, counter: DropCounter) {
        self.outputs.push((name, counter, 0));
    }

    /// Whether the output `name` is watched (is open).
    pub fn watches(&self, name: &str) -> bool {
        self.outputs.iter().any(|(watched, _, _)| *watched == name)
    }

    /// Copies the counts into `loss`, and warns as described above.
    pub fn update(&mut self, loss: &mut LossReport) {
        for (name, counter, warned) in &mut self.outputs {
            let dropped = counter.get();
            loss.output_dropped.insert(name, dropped);
            if worth_a_warning(dropped, *warned) {
                tracing::warn!(
                    "{name} could not keep up: {dropped} record(s) dropped so far, counted in \
                     the stats line as dropped_by_{name}"
                );
                *warned = dropped;
            }
        }
    }
}

fn worth_a_warning(dropped: u64, warned: u64) -> bool {
    dropped > 0 && dropped >= warned.saturating_mul(2).max(1)
}

#[cfg(test)]
mod tests {
    use super::worth_a_warning;

    #[test]
    fn warns_at_the_first_drop_then_at_each_doubling() {
        let mut warned = 0;
        let mut warnings = Vec::new();
        for dropped in [0, 0, 3, 4, 5, 6, 11, 12, 100, 100] {
            if worth_a_warning(dropped, warned) {
                warnings.push(dropped);
                warned = dropped;
            }
        }
        assert_eq!(warnings, [3, 6, 12, 100]);
    }
}
