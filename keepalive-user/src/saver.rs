//! The daemon's learned state across restarts: restored at start, saved at intervals on a
//! thread of its own (a slow disk must not hold up the ring-buffer reader), and at exit.

use std::{path::Path, thread::JoinHandle};

use keepalive_observer::{
    correlate::Correlator,
    sink::WallClock,
    state::{PersistError, Restored, StateDir},
};
use keepalive_schema::state::State;

/// Saves what the correlator learned.
pub struct Saver {
    dir: StateDir,
    clock: WallClock,
    /// The last state handed to a write, to skip writes that would change nothing.
    last: Option<State>,
    writing: Option<JoinHandle<Result<(), PersistError>>>,
}

impl Saver {
    /// Restores the state of `dir` (locked) into `correlator`; returns the saver and the
    /// start-up report's line about it. An unusable file was moved aside with a warning.
    pub fn start(
        dir: StateDir,
        correlator: &mut Correlator,
        clock: WallClock,
    ) -> Result<(Saver, String), PersistError> {
        let restored = dir.restore(correlator, clock)?;
        if let Some((aside, why)) = &restored.kept_aside {
            tracing::warn!(
                "{why}; starting with nothing learned, the file was kept as {}",
                aside.display()
            );
        }
        let line = describe(dir.file(), &restored);
        let saver = Saver {
            dir,
            clock,
            last: None,
            writing: None,
        };
        Ok((saver, line))
    }

    /// Writes the state in the background unless nothing changed since the last write or
    /// the last write is still under way.
    pub fn save(&mut self, correlator: &Correlator) {
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        self.collect();
        let state = self.dir.snapshot(correlator, self.clock);
        if self
            .last
            .as_ref()
            .is_some_and(|last| same_knowledge(last, &state))
        {
            return;
        }
        let writer = self.dir.writer();
        let written = state.clone();
        match std::thread::Builder::new()
            .name("state writer".to_owned())
            .spawn(move || writer.write(&written))
        {
            Ok(handle) => {
                self.writing = Some(handle);
                self.last = Some(state);
            }
            Err(error) => tracing::warn!("cannot start the state writer: {error}"),
        }
    }

    /// Writes the state one last time, after any write under way.
    pub fn finish(mut self, correlator: &Correlator) {
        self.collect_waiting();
        let state = self.dir.snapshot(correlator, self.clock);
        if let Err(error) = self.dir.writer().write(&state) {
            tracing::warn!("{error}");
        }
    }

    /// Reports how the last background write went, once it is done.
    fn collect(&mut self) {
        if self.writing.as_ref().is_some_and(JoinHandle::is_finished) {
            self.collect_waiting();
        }
    }

    fn collect_waiting(&mut self) {
        let Some(handle) = self.writing.take() else {
            return;
        };
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!("{error}");
                // Try again at the next interval, changed or not.
                self.last = None;
            }
            Err(_) => tracing::warn!("the state writer panicked"),
        }
    }
}

fn same_knowledge(a: &State, b: &State) -> bool {
    a.destinations == b.destinations && a.peer_ttls == b.peer_ttls
}

fn describe(file: &Path, restored: &Restored) -> String {
    let mut line = format!(
        "{}: {} destination(s) and {} peer TTL(s) restored",
        file.display(),
        restored.destinations,
        restored.peer_ttls
    );
    if restored.other_boot > 0 {
        line.push_str(&format!(
            ", {} entries of other namespaces left out (an earlier boot)",
            restored.other_boot
        ));
    }
    if let Some((aside, _)) = &restored.kept_aside {
        line.push_str(&format!(
            "; the file there was unusable and was kept as {}",
            aside.display()
        ));
    }
    line
}
