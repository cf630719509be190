//! Record and replay: the raw ring-buffer records and the correlator's ticks as JSON lines,
//! so a capture decodes and correlates the same way anywhere, without root.
//!
//! ```text
//! {"type":"header","version":1,"decode":{...},"keepalive_sysctls":{...},"wall_offset_ns":N}
//! {"type":"raw","data":"<hex of one 128-byte record>"}
//! {"type":"tick","mono_ns":N}
//! ```
//!
//! Raw records rather than decoded events are kept so that a recording made by one build can
//! be decoded by a later one; the header carries what decoding needs (HZ, reset reason names)
//! and the keepalive sysctls the correlator was given.

use std::io::{self, BufRead, Write};

use keepalive_common::Event as RawEvent;
use serde::{Deserialize, Serialize};

use crate::{
    correlate::KeepaliveSysctls,
    event::{self, DecodeContext, DecodeError, TcpEvent},
};

/// The format version this build writes and reads. Version 2: records carry the connection's
/// kernel-side context and state changes no longer cross (version 1 had a record per state
/// change and per SYN/RST segment).
pub const FORMAT_VERSION: u32 = 2;

/// Bytes in one raw record.
const RECORD_BYTES: usize = size_of::<RawEvent>();

/// The longest line a recording may hold. A record's line has about 300 bytes and the header
/// about 2 KiB; a longer line is not a recording's, and is skipped as it is read rather than
/// buffered, so a hostile file cannot make a replay allocate more than this per line.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The first line of a recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordHeader {
    /// Format version, [`FORMAT_VERSION`].
    pub version: u32,
    /// How to decode the raw records.
    pub decode: DecodeContext,
    /// The keepalive sysctls the correlator used.
    pub keepalive_sysctls: KeepaliveSysctls,
    /// The correlator's idle-expiry floor (`--idle-expiry-floor`), milliseconds: replay
    /// needs the same value to reach the same findings.
    pub idle_expiry_floor_ms: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC at the start of the recording, nanoseconds: adds
    /// to an event's `mono_ns` to give its wall-clock time.
    pub wall_offset_ns: i64,
}

impl RecordHeader {
    /// A header for this build's format version.
    pub fn new(
        decode: DecodeContext,
        keepalive_sysctls: KeepaliveSysctls,
        idle_expiry_floor_ms: u64,
        wall_offset_ns: i64,
    ) -> Self {
        Self {
            version: FORMAT_VERSION,
            decode,
            keepalive_sysctls,
            idle_expiry_floor_ms,
            wall_offset_ns,
        }
    }
}

/// The header as written: its fields after `"type":"header"`.
#[derive(Serialize)]
struct HeaderLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    header: &'a RecordHeader,
}

/// One line of a recording. A header is only recognised here: serde's tagged enums buffer
/// their content, and the reset reasons' number keys do not survive that, so the header is
/// parsed on its own.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Header {},
    Raw { data: String },
    Tick { mono_ns: u64 },
}

/// Why a recording could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Writing to the output failed.
    #[error("cannot write the recording: {0}")]
    Io(#[from] io::Error),
    /// A line could not be serialized.
    #[error("cannot serialize a recording line: {0}")]
    Json(#[from] serde_json::Error),
    /// The record is too short to be an event.
    #[error("cannot record: {0}")]
    Record(#[from] DecodeError),
}

/// Writes a recording.
#[derive(Debug)]
pub struct Recorder<W: Write> {
    out: W,
}

impl<W: Write> Recorder<W> {
    /// Starts a recording by writing its header.
    pub fn new(out: W, header: &RecordHeader) -> Result<Self, RecordError> {
        let mut recorder = Self { out };
        recorder.line(&HeaderLine {
            kind: "header",
            header,
        })?;
        Ok(recorder)
    }

    /// Records one ring-buffer record, exactly as the kernel wrote it (its first
    /// [`RECORD_BYTES`] bytes).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let record = event::raw_bytes(&event::raw_event(bytes)?);
        self.line(&Line::Raw {
            data: hex_encode(&record),
        })
    }

    /// Records a correlator tick at `mono_ns`.
    pub fn tick(&mut self, mono_ns: u64) -> Result<(), RecordError> {
        self.line(&Line::Tick { mono_ns })
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        Ok(self.out.flush()?)
    }

    /// The output, borrowed.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The output, e.g. to check what was written.
    pub fn into_inner(self) -> W {
        self.out
    }

    fn line(&mut self, line: &impl Serialize) -> Result<(), RecordError> {
        serde_json::to_writer(&mut self.out, line)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }
}

/// Why a recording could not be read. Every variant names the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the input failed.
    #[error("line {line}: cannot read: {source}")]
    Io {
        /// Line being read.
        line: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The line is longer than [`MAX_LINE_BYTES`]: it was skipped, not held in memory.
    #[error("line {line}: longer than {limit} bytes, not a line of a recording")]
    LineTooLong {
        /// Line number.
        line: usize,
        /// [`MAX_LINE_BYTES`].
        limit: usize,
    },
    /// The line is not UTF-8 text.
    #[error("line {line}: not UTF-8 text (bad byte at offset {offset})")]
    NotUtf8 {
        /// Line number.
        line: usize,
        /// 0-based byte offset of the first byte that is not UTF-8.
        offset: usize,
    },
    /// The input holds no line at all.
    #[error("line 1: empty recording, expected a header")]
    Empty,
    /// The first line is not a header.
    #[error("line {line}: expected the header first, found a {found:?} line")]
    MissingHeader {
        /// Line number.
        line: usize,
        /// The line's `type`, or what stood in its place.
        found: String,
    },
    /// The header names a format version this build cannot read.
    #[error(
        "line {line}: unknown recording version {found}, this build reads version {FORMAT_VERSION}"
    )]
    UnknownVersion {
        /// Line number.
        line: usize,
        /// The `version` value as written.
        found: String,
    },
    /// The recording was made by an older build, whose records this build cannot decode.
    #[error(
        "line {line}: this recording is format version {found}, made by an older \
         keepalive-observer; this build reads version {FORMAT_VERSION} only (record it again, or \
         replay it with the build that made it)"
    )]
    OlderVersion {
        /// Line number.
        line: usize,
        /// The version written.
        found: u64,
    },
    /// A second header.
    #[error("line {line}: a header after the first line")]
    DuplicateHeader {
        /// Line number.
        line: usize,
    },
    /// Not JSON, or not a line of this format.
    #[error("line {line}: bad JSON: {source}")]
    Json {
        /// Line number.
        line: usize,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// `data` holds a byte that is not a hex digit, or an odd number of digits.
    #[error("line {line}: bad hex in data at byte {offset}")]
    Hex {
        /// Line number.
        line: usize,
        /// 0-based byte offset in `data` (its length when the number of digits is odd).
        offset: usize,
    },
    /// The record has the wrong length.
    #[error("line {line}: record has {got} bytes, expected {expected}")]
    Length {
        /// Line number.
        line: usize,
        /// Bytes in `data`.
        got: usize,
        /// Bytes in a record.
        expected: usize,
    },
    /// The record does not decode (unknown event kind or address family).
    #[error("line {line}: {source}")]
    Decode {
        /// Line number.
        line: usize,
        /// Why.
        #[source]
        source: DecodeError,
    },
}

/// One replayed item, in recording order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "items are consumed one at a time; boxing would allocate per event for nothing"
)]
pub enum ReplayItem {
    /// A decoded event, for [`Correlator::on_event`](crate::correlate::Correlator::on_event).
    Event(TcpEvent),
    /// A tick, for [`Correlator::on_tick`](crate::correlate::Correlator::on_tick).
    Tick(u64),
}

/// Reads a recording: the header at construction, then one [`ReplayItem`] per line. A bad
/// line yields its error and reading goes on with the next; a read failure ends the replay.
#[derive(Debug)]
pub struct Replay<R> {
    input: R,
    line: usize,
    header: RecordHeader,
    done: bool,
}

impl<R: BufRead> Replay<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, ReplayError> {
        let mut line = 0;
        let text = loop {
            match read_line(&mut input, &mut line)? {
                None => return Err(ReplayError::Empty),
                Some(Ok(text)) if text.trim().is_empty() => continue,
                Some(text) => break text?,
            }
        };
        let header = parse_header(&text, line)?;
        Ok(Self {
            input,
            line,
            header,
            done: false,
        })
    }

    /// The recording's header.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    fn item(&self, text: &str) -> Result<ReplayItem, ReplayError> {
        let line = self.line;
        match serde_json::from_str(text).map_err(|source| ReplayError::Json { line, source })? {
            Line::Header {} => Err(ReplayError::DuplicateHeader { line }),
            Line::Tick { mono_ns } => Ok(ReplayItem::Tick(mono_ns)),
            Line::Raw { data } => {
                let bytes =
                    hex_decode(&data).map_err(|offset| ReplayError::Hex { line, offset })?;
                if bytes.len() != RECORD_BYTES {
                    return Err(ReplayError::Length {
                        line,
                        got: bytes.len(),
                        expected: RECORD_BYTES,
                    });
                }
                self.header
                    .decode
                    .decode(&bytes)
                    .map(ReplayItem::Event)
                    .map_err(|source| ReplayError::Decode { line, source })
            }
        }
    }
}

impl<R: BufRead> Iterator for Replay<R> {
    type Item = Result<ReplayItem, ReplayError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match read_line(&mut self.input, &mut self.line) {
                Err(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
                Ok(None) => self.done = true,
                Ok(Some(Ok(text))) if text.trim().is_empty() => {}
                Ok(Some(Ok(text))) => return Some(self.item(&text)),
                Ok(Some(Err(bad_line))) => return Some(Err(bad_line)),
            }
        }
        None
    }
}

/// The next line without its terminator, counting lines: `None` at the end, the line's own
/// error when it is too long (then the rest of it is read and dropped) or not UTF-8, and
/// `Err` when reading fails.
fn read_line(
    input: &mut impl BufRead,
    line: &mut usize,
) -> Result<Option<Result<String, ReplayError>>, ReplayError> {
    *line += 1;
    let mut bytes = Vec::new();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ReplayError::Io {
                    line: *line,
                    source,
                });
            }
        };
        if available.is_empty() {
            break;
        }
        read_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        if !too_long && bytes.len() + chunk.len() > MAX_LINE_BYTES {
            too_long = true;
            bytes = Vec::new();
        } else if !too_long {
            bytes.extend_from_slice(chunk);
        }
        let used = newline.map_or(available.len(), |at| at + 1);
        input.consume(used);
        if newline.is_some() {
            break;
        }
    }
    if !read_any {
        return Ok(None);
    }
    if too_long {
        return Ok(Some(Err(ReplayError::LineTooLong {
            line: *line,
            limit: MAX_LINE_BYTES,
        })));
    }
    while bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    Ok(Some(String::from_utf8(bytes).map_err(|error| {
        ReplayError::NotUtf8 {
            line: *line,
            offset: error.utf8_error().valid_up_to(),
        }
    })))
}

/// Checks `type` and `version` before the rest, so that a newer format says so instead of
/// failing on a field this build does not know.
fn parse_header(text: &str, line: usize) -> Result<RecordHeader, ReplayError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| ReplayError::Json { line, source })?;
    let kind = value.get("type");
    if kind.and_then(|t| t.as_str()) != Some("header") {
        return Err(ReplayError::MissingHeader {
            line,
            found: kind.map_or_else(|| "untyped".to_owned(), |t| t.to_string()),
        });
    }
    let version = value.get("version");
    if let Some(found) = version
        .and_then(|v| v.as_u64())
        .filter(|&v| v < u64::from(FORMAT_VERSION))
    {
        return Err(ReplayError::OlderVersion { line, found });
    }
    if version.and_then(|v| v.as_u64()) != Some(u64::from(FORMAT_VERSION)) {
        return Err(ReplayError::UnknownVersion {
            line,
            found: version.map_or_else(|| "(missing)".to_owned(), |v| v.to_string()),
        });
    }
    // From the text, not the value: map keys that are numbers (the reset reasons) only
    // deserialize from text. `type` is ignored as an unknown field.
    serde_json::from_str(text).map_err(|source| ReplayError::Json { line, source })
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Decodes hex digits (either case); the error is the byte offset of the first bad digit, or
/// the length when the number of digits is odd.
fn hex_decode(text: &str) -> Result<Vec<u8>, usize> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return Err(digits.len());
    }
    let nibble = |offset: usize| -> Result<u8, usize> {
        let digit = char::from(digits[offset]);
        digit
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
            .ok_or(offset)
    };
    (0..digits.len())
        .step_by(2)
        .map(|i| Ok(nibble(i)? << 4 | nibble(i + 1)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{hex_decode, hex_encode};

    #[test]
    fn hex_round_trips_and_points_at_bad_digits() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_decode(&hex_encode(&bytes)), Ok(bytes));
        assert_eq!(hex_decode("0A0b"), Ok(vec![10, 11]));
        assert_eq!(hex_decode("0g"), Err(1));
        assert_eq!(hex_decode("abc"), Err(3));
        assert_eq!(hex_decode("éa0"), Err(0));
    }
}
