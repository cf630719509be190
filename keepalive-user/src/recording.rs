//! `--record FILE` as the daemon writes it: behind a bounded queue on a thread of its own,
//! rotated at a size limit, and stopped (with a warning, and every record after that counted
//! as dropped) when the file cannot be written, e.g. on a full disk: the daemon goes on.
//!
//! Rotation renames `FILE` to `FILE.1` (replacing the one before) and starts `FILE` again
//! with its header, so each file replays on its own and the two take at most twice the limit.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    queue::{DropCounter, Output, Queue},
    record::{RecordError, RecordHeader, Recorder},
};

/// Lines waiting to be written, at most: a raw record's copy is a few hundred bytes, so a
/// full queue holds a few MiB.
const CAPACITY: usize = 16_384;
/// How long the recording may make no progress at exit before what it still has queued is
/// given up (see [`crate::queue`]).
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Why a recording could not be started, rotated or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The file could not be created, or an old one renamed away.
    #[error("cannot {operation} the recording {}: {source}", path.display())]
    File {
        /// What was being done: `create`, `rotate`.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line could not be written: the recording stops here.
    #[error("{}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: RecordError,
    },
    /// The thread that writes it could not be started.
    #[error("cannot start the thread writing the recording: {0}")]
    Thread(#[source] io::Error),
}

/// One line for the recording's thread.
pub enum Line {
    /// A ring-buffer record, as the kernel wrote it.
    Raw(Box<[u8]>),
    /// A correlator tick at this CLOCK_MONOTONIC ns.
    Tick(u64),
}

/// The file being written, with what rotation needs.
struct RotatingFile {
    path: PathBuf,
    header: RecordHeader,
    /// Rotate once a file holds this many bytes.
    limit: u64,
    recorder: Recorder<Counted>,
}

/// A buffered file that counts what was written to it.
struct Counted {
    out: BufWriter<File>,
    bytes: u64,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl RotatingFile {
    fn create(path: &Path, header: &RecordHeader, limit: u64) -> Result<Self, RecordingError> {
        Ok(Self {
            path: path.to_owned(),
            header: header.clone(),
            limit,
            recorder: start(path, header)?,
        })
    }

    fn rotate(&mut self) -> Result<(), RecordingError> {
        self.recorder
            .flush()
            .map_err(|source| self.write_error(source))?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        fs::rename(&self.path, &old).map_err(|source| RecordingError::File {
            operation: "rotate",
            path: self.path.clone(),
            source,
        })?;
        self.recorder = start(&self.path, &self.header)?;
        Ok(())
    }

    fn write_error(&self, source: RecordError) -> RecordingError {
        RecordingError::Write {
            path: self.path.clone(),
            source,
        }
    }
}

fn start(path: &Path, header: &RecordHeader) -> Result<Recorder<Counted>, RecordingError> {
    let file = File::create(path).map_err(|source| RecordingError::File {
        operation: "create",
        path: path.to_owned(),
        source,
    })?;
    let out = Counted {
        out: BufWriter::new(file),
        bytes: 0,
    };
    Recorder::new(out, header).map_err(|source| RecordingError::Write {
        path: path.to_owned(),
        source,
    })
}

impl Output for RotatingFile {
    type Message = Line;
    type Error = RecordingError;

    fn write(&mut self, line: Line) -> Result<(), RecordingError> {
        let written = match line {
            Line::Raw(bytes) => self.recorder.raw(&bytes),
            Line::Tick(mono_ns) => self.recorder.tick(mono_ns),
        };
        written.map_err(|source| self.write_error(source))?;
        if self.recorder.get_ref().bytes >= self.limit {
            self.rotate()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RecordingError> {
        self.recorder
            .flush()
            .map_err(|source| self.write_error(source))
    }

    /// Only a record too short to decode leaves the file usable.
    fn is_final(error: &RecordingError) -> bool {
        !matches!(
            error,
            RecordingError::Write {
                source: RecordError::Record(_),
                ..
            }
        )
    }
}

/// The recording, for the ring-buffer reader: every call only queues.
pub struct Recording {
    queue: Queue<RotatingFile>,
}

impl Recording {
    /// Creates `path`, writes its header and starts the thread that writes the rest; files
    /// are rotated once they hold `limit` bytes.
    pub fn start(path: &Path, header: &RecordHeader, limit: u64) -> Result<Self, RecordingError> {
        let file = RotatingFile::create(path, header, limit)?;
        Ok(Self {
            queue: Queue::spawn("recording", file, CAPACITY, EXIT_GRACE)
                .map_err(RecordingError::Thread)?,
        })
    }

    /// Queues one ring-buffer record.
    pub fn raw(&self, bytes: &[u8]) {
        self.queue.push(Line::Raw(bytes.into()));
    }

    /// Queues a correlator tick.
    pub fn tick(&self, mono_ns: u64) {
        self.queue.push(Line::Tick(mono_ns));
    }

    /// What went wrong since the last call. After an error that is not about one record,
    /// nothing more is recorded and every record is counted as dropped.
    pub fn take_error(&self) -> Option<RecordingError> {
        self.queue.take_error()
    }

    /// Records not recorded: the queue was full, or recording had stopped.
    pub fn dropped(&self) -> DropCounter {
        self.queue.dropped()
    }
}

#[cfg(test)]
mod tests {
    use keepalive_common::Event as RawEvent;

    use super::*;
    use crate::{
        correlate::KeepaliveSysctls,
        event::{DecodeContext, raw_bytes},
    };

    fn header() -> RecordHeader {
        let decode = DecodeContext {
            hz: 250,
            reset_reasons: Default::default(),
        };
        RecordHeader::new(decode, KeepaliveSysctls::default(), 30_000, 0)
    }

    /// The types of a file's lines, and the ticks' times in order.
    fn lines(path: &Path) -> (Vec<String>, Vec<u64>) {
        let text = fs::read_to_string(path).unwrap();
        let values: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let types = values.iter().map(|v| v["type"].to_string()).collect();
        let ticks = values
            .iter()
            .filter_map(|v| v["mono_ns"].as_u64())
            .collect();
        (types, ticks)
    }

    #[test]
    fn files_rotate_at_the_limit_and_each_starts_with_its_header() {
        let dir = std::env::temp_dir().join(format!("keepalive-recording-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rec.jsonl");
        // SAFETY: `RawEvent` is plain old data: all zeroes is a valid value.
        let raw = raw_bytes(&unsafe { std::mem::zeroed::<RawEvent>() });
        let recording = Recording::start(&path, &header(), 4096).unwrap();
        for n in 0..40 {
            recording.raw(&raw);
            recording.tick(n);
        }
        let dropped = recording.dropped();
        drop(recording);
        assert_eq!(dropped.get(), 0);
        let rotated = dir.join("rec.jsonl.1");
        let (old_types, old_ticks) = lines(&rotated);
        let (new_types, new_ticks) = lines(&path);
        assert_eq!(old_types[0], r#""header""#);
        assert_eq!(new_types[0], r#""header""#);
        assert!(fs::metadata(&rotated).unwrap().len() < 4096 + 1024);
        // Older files are gone; the last two hold the newest lines, in order, none lost
        // across the rotation between them.
        let ticks: Vec<u64> = old_ticks.into_iter().chain(new_ticks).collect();
        let first = ticks[0];
        assert!(first > 0, "rotated more than once: {ticks:?}");
        assert_eq!(ticks, (first..40).collect::<Vec<_>>());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_file_is_a_clear_error() {
        let error = Recording::start(Path::new("/nonexistent/dir/rec.jsonl"), &header(), 1 << 20)
            .err()
            .expect("no such directory");
        assert!(
            error.to_string().contains("/nonexistent/dir/rec.jsonl"),
            "{error}"
        );
    }
}
