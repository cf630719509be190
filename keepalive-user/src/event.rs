//! Decoding: the raw ring-buffer records into the typed events of `keepalive-schema`
//! (re-exported here).
//!
//! Decoding is pure: it needs the kernel's `HZ` and the names of `enum sk_rst_reason`, both
//! passed in through [`DecodeContext`], so recorded streams decode the same way anywhere.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use keepalive_common::{ConnContext, Event as RawEvent, EventKind, context_flags, flags};
pub use keepalive_schema::event::*;
use serde::{Deserialize, Serialize};

/// Why a raw record could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than [`RawEvent`].
    #[error("event record has {got} bytes, expected at least {expected}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes in a [`RawEvent`].
        expected: usize,
    },
    /// The kind byte is not one this build knows.
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    /// The address family is neither AF_INET nor AF_INET6.
    #[error("unknown address family {0}")]
    UnknownFamily(u8),
}

/// What decoding needs to know about the kernel that produced the records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeContext {
    /// The kernel's `CONFIG_HZ`: jiffies per second.
    pub hz: u32,
    /// Names of `enum sk_rst_reason` by value, without the `SK_RST_REASON_` prefix.
    pub reset_reasons: BTreeMap<u32, String>,
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Reset reasons the kernel only uses from a system call on the socket (close, shutdown,
/// disconnect), so the current task is the socket's user.
const PROCESS_CONTEXT_REASONS: &[&str] = &[
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_DATA",
    "TCP_DISCONNECT_WITH_DATA",
    "TCP_STATE",
];

impl DecodeContext {
    /// Decodes one ring-buffer record.
    pub fn decode(&self, bytes: &[u8]) -> Result<TcpEvent, DecodeError> {
        let raw = raw_event(bytes)?;
        let kind: TcpEventKind = EventKind::from_raw(raw.kind)
            .ok_or(DecodeError::UnknownKind(raw.kind))?
            .into();
        let (local, remote) = endpoints(&raw)?;
        let has_tcp = raw.flags & flags::HAS_TCP != 0;
        let reset_sent = kind == TcpEventKind::ResetSent;
        let reason = (reset_sent && raw.flags & flags::NO_REASON == 0).then(|| ResetReason {
            raw: raw.reason,
            name: self.reset_reasons.get(&raw.reason).cloned(),
        });
        let reset_facts = reset_sent.then_some(ResetFacts {
            answers_segment: raw.flags & flags::FROM_SEGMENT != 0,
            linger_zero: raw.flags & flags::LINGER_ZERO != 0,
            unread_bytes: if has_tcp { raw.unread } else { 0 },
            probes_exhausted: raw.flags & flags::PROBES_EXHAUSTED != 0,
        });
        let keepalive = has_tcp.then(|| KeepaliveState {
            enabled: raw.flags & flags::KEEPALIVE_ON != 0,
            idle_ms: self.nonzero_jiffies_ms(raw.keepalive_time),
            interval_ms: self.nonzero_jiffies_ms(raw.keepalive_intvl),
            count: (raw.keepalive_probes != 0).then_some(raw.keepalive_probes),
            probes_out: raw.probes_out,
        });
        let mut event = TcpEvent {
            mono_ns: raw.ts_ns,
            kind,
            cookie: raw.cookie,
            netns: raw.netns,
            netns_cookie: raw.netns_cookie,
            local,
            remote,
            old_state: TcpState::from_raw(raw.old_state),
            new_state: TcpState::from_raw(raw.new_state),
            reason,
            reset_facts,
            sk_err: (raw.sk_err != 0).then_some(raw.sk_err),
            idle_rx_ms: has_tcp.then(|| self.jiffies_ms(raw.jiffies.wrapping_sub(raw.rcv_tstamp))),
            idle_tx_ms: has_tcp.then(|| self.jiffies_ms(raw.jiffies.wrapping_sub(raw.lsndtime))),
            keepalive,
            retransmits: has_tcp.then_some(raw.retransmits),
            tcp_flags: (reset_sent && raw.flags & flags::FROM_SEGMENT != 0)
                .then_some(raw.tcp_flags),
            bytes: (kind == TcpEventKind::ReplyAfterIdle).then_some(raw.bytes),
            task: None,
            context: (raw.flags & flags::HAS_CONTEXT != 0).then(|| self.context(&raw.context)),
        };
        if runs_in_process_context(&event) && raw.pid != 0 {
            event.task = Some(Task {
                pid: raw.pid,
                tid: raw.tid,
                comm: raw.comm.into(),
            });
        }
        Ok(event)
    }

    fn context(&self, raw: &ConnContext) -> ConnectionContext {
        let time = |ns: u64| (ns != 0).then_some(ns);
        let origin = if raw.flags & context_flags::ACCEPTED != 0 {
            Some(Origin::Accepted)
        } else if raw.flags & context_flags::CONNECTED != 0 {
            Some(Origin::Connected)
        } else {
            None
        };
        ConnectionContext {
            origin,
            from_handshake: raw.flags & context_flags::FROM_HANDSHAKE != 0,
            born_ns: time(raw.born_ns),
            established_ns: time(raw.established_ns),
            owner: (raw.owner_pid != 0).then(|| Task {
                pid: raw.owner_pid,
                tid: raw.owner_tid,
                comm: raw.owner_comm.into(),
            }),
            owner_cgroup: (raw.owner_pid != 0 && raw.owner_cgroup != 0).then_some(raw.owner_cgroup),
            peer_ttl: (raw.peer_ttl != 0).then_some(raw.peer_ttl),
            rst: (raw.rst_ns != 0).then_some(RstSegment {
                at_ns: raw.rst_ns,
                ttl: raw.rst_ttl,
                flags: raw.rst_flags,
            }),
            peer_fin_ns: time(raw.peer_fin_ns)
                .filter(|_| raw.flags & context_flags::PEER_FIN_FIRST != 0),
            peer_fin_idle_ms: (raw.flags & context_flags::PEER_FIN_FIRST != 0
                && raw.peer_fin_ns != 0)
                .then(|| self.jiffies_ms(raw.peer_fin_gap)),
            idle_send: time(raw.idle_send_ns).map(|at_ns| IdleSend {
                at_ns,
                gap_ms: self.jiffies_ms(raw.idle_send_gap),
            }),
            state_before_close: (raw.state_before_close != 0)
                .then(|| TcpState::from_raw(raw.state_before_close)),
        }
    }

    /// Converts a jiffies count to milliseconds with the kernel's HZ.
    pub fn jiffies_ms(&self, jiffies: u32) -> u64 {
        u64::from(jiffies) * 1000 / u64::from(self.hz.max(1))
    }

    fn nonzero_jiffies_ms(&self, jiffies: u32) -> Option<u64> {
        (jiffies != 0).then(|| self.jiffies_ms(jiffies))
    }
}

/// Copies the record out of the ring buffer's bytes.
pub fn raw_event(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let expected = size_of::<RawEvent>();
    if bytes.len() < expected {
        return Err(DecodeError::Truncated {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length was checked above, `RawEvent` is plain old data for which every bit
    // pattern is valid, and `read_unaligned` makes no alignment assumption.
    Ok(unsafe { bytes.as_ptr().cast::<RawEvent>().read_unaligned() })
}

/// The raw record as bytes, the inverse of [`raw_event`] (used by recordings and tests).
pub fn raw_bytes(raw: &RawEvent) -> Vec<u8> {
    // SAFETY: `RawEvent` is `#[repr(C)]` with explicit padding fields, so all of its bytes are
    // initialised.
    unsafe {
        std::slice::from_raw_parts((raw as *const RawEvent).cast::<u8>(), size_of::<RawEvent>())
    }
    .to_vec()
}

fn endpoints(raw: &RawEvent) -> Result<(SocketAddr, SocketAddr), DecodeError> {
    let ip = |bytes: &[u8; 16]| -> Result<IpAddr, DecodeError> {
        match raw.family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes)).to_canonical()),
            other => Err(DecodeError::UnknownFamily(other)),
        }
    };
    Ok((
        SocketAddr::new(ip(&raw.local_addr)?, raw.local_port),
        SocketAddr::new(ip(&raw.remote_addr)?, raw.remote_port),
    ))
}

/// Whether the task current at the event is the one using the socket. Timer and softirq
/// events run in whatever task the CPU happened to be running, so their pid/comm mean nothing.
fn runs_in_process_context(event: &TcpEvent) -> bool {
    match event.kind {
        TcpEventKind::ReplyAfterIdle => true,
        TcpEventKind::ResetSent if event.cookie == 0 => false,
        TcpEventKind::ResetSent => match &event.reason {
            Some(reason) => reason
                .name
                .as_deref()
                .is_some_and(|name| PROCESS_CONTEXT_REASONS.contains(&name)),
            // No reason (kernels before 6.10): a zero-linger close or a close with unread
            // data comes from the process; a used-up keepalive from the timer.
            None => event.reset_facts.is_some_and(|f| {
                !f.answers_segment && !f.probes_exhausted && (f.linger_zero || f.unread_bytes > 0)
            }),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use keepalive_common::tcp_state::{CLOSE, ESTABLISHED};

    use super::*;
    use crate::correlate::{Confidence, Correlator, CorrelatorConfig, FindingKind};

    /// A kernel before 6.10: no reason names at all.
    fn old_kernel() -> DecodeContext {
        DecodeContext {
            hz: 250,
            reset_reasons: BTreeMap::new(),
        }
    }

    /// A raw RST sent on socket `cookie` by a hook without a reason, from pid 42.
    fn reasonless_reset(cookie: u64, extra_flags: u8, unread: u32) -> RawEvent {
        let mut raw = RawEvent::zeroed(EventKind::ResetSent);
        raw.cookie = cookie;
        raw.family = AF_INET;
        raw.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        raw.local_port = 40000;
        raw.remote_port = 8080;
        raw.old_state = CLOSE;
        raw.new_state = CLOSE;
        raw.flags = flags::HAS_SOCK | flags::HAS_TCP | flags::NO_REASON | extra_flags;
        raw.unread = unread;
        raw.pid = 42;
        raw.tid = 42;
        raw.comm[..6].copy_from_slice(b"client");
        raw
    }

    /// The finding kind the correlator gives a reasonless RST sent after ESTABLISHED → CLOSE.
    fn kind_of(raw: &RawEvent) -> FindingKind {
        let ctx = old_kernel();
        let mut raw = *raw;
        raw.flags |= flags::HAS_CONTEXT;
        raw.context.state_before_close = ESTABLISHED;
        let mut correlator = Correlator::new(CorrelatorConfig::default());
        let reset = ctx.decode(&raw_bytes(&raw)).unwrap();
        let mut findings = correlator.on_event(&reset);
        // A loopback close waits for its other end's record, which does not come here.
        findings.extend(correlator.finish());
        assert_eq!(findings.len(), 1, "{findings:?}");
        findings[0].kind
    }

    #[test]
    fn comm_is_bytes_shown_as_text() {
        let comm = Comm::from(*b"python3\0\0\0\0\0\0\0\0\0");
        assert_eq!(comm.as_bytes(), b"python3");
        assert_eq!(comm.to_string(), "python3");
        assert_eq!(serde_json::to_string(&comm).unwrap(), "\"python3\"");
        let long = Comm::from("a-very-long-command-name");
        assert_eq!(
            long.to_string(),
            "a-very-long-com",
            "15 bytes, as the kernel keeps it"
        );
        assert_eq!(
            serde_json::from_str::<Comm>("\"java\"").unwrap(),
            Comm::from("java")
        );
        let full = Comm::from([b'x'; 16]);
        assert_eq!(full.as_bytes().len(), 16);
        assert_eq!(Comm::from([0xff; 16]).to_string(), "\\xff".repeat(16));
    }

    #[test]
    fn a_command_name_cannot_start_a_line_a_field_or_a_sentence() {
        let hostile = Comm::from("a\nb;c|d\"e\\f\u{7}");
        let shown = hostile.to_string();
        assert_eq!(shown, r"a\x0ab\x3bc\x7cd\x22e\x5cf\x07");
        assert!(shown.chars().all(|c| c.is_ascii_graphic() || c == ' '));
        let json = serde_json::to_string(&hostile).unwrap();
        assert_eq!(
            serde_json::from_str::<Comm>(&json).unwrap(),
            hostile,
            "the escaped text parses back to the same bytes"
        );
        assert_eq!(Comm::from("Web Content").to_string(), "Web Content");
        let rtl = Comm::from("x\u{202e}y");
        assert_eq!(rtl.to_string(), r"x\xe2\x80\xaey");
    }

    #[test]
    fn the_context_decodes_with_the_kernels_hz() {
        let mut raw = reasonless_reset(11, 0, 0);
        raw.flags |= flags::HAS_CONTEXT;
        raw.context = ConnContext {
            established_ns: 5,
            idle_send_ns: 9,
            idle_send_gap: 500,
            owner_pid: 77,
            owner_tid: 78,
            peer_ttl: 63,
            rst_ttl: 64,
            rst_flags: keepalive_common::tcp_flags::RST,
            rst_ns: 10,
            flags: context_flags::ACCEPTED | context_flags::FROM_HANDSHAKE,
            state_before_close: ESTABLISHED,
            ..ConnContext::zeroed()
        };
        raw.context.owner_comm[..4].copy_from_slice(b"java");
        let context = old_kernel()
            .decode(&raw_bytes(&raw))
            .unwrap()
            .context
            .expect("context");
        assert_eq!(context.origin, Some(Origin::Accepted));
        assert!(context.from_handshake);
        assert_eq!(context.established_ns, Some(5));
        assert_eq!(
            context.idle_send,
            Some(IdleSend {
                at_ns: 9,
                gap_ms: 2000
            })
        );
        assert_eq!(
            context.owner.map(|o| (o.pid, o.comm.to_string())),
            Some((77, "java".into()))
        );
        assert_eq!(context.peer_ttl, Some(63));
        assert_eq!(context.rst.map(|r| (r.ttl, r.at_ns)), Some((64, 10)));
        assert_eq!(context.peer_fin_ns, None);
        assert_eq!(context.state_before_close, Some(TcpState::Established));
        let without = old_kernel()
            .decode(&raw_bytes(&reasonless_reset(12, 0, 0)))
            .unwrap();
        assert_eq!(without.context, None, "no HAS_CONTEXT flag, no context");
    }

    #[test]
    fn a_reset_without_reason_carries_the_socket_state() {
        let raw = reasonless_reset(7, flags::LINGER_ZERO, 0);
        let event = old_kernel().decode(&raw_bytes(&raw)).unwrap();
        assert_eq!(event.reason, None);
        let facts = event.reset_facts.unwrap();
        assert!(facts.linger_zero && !facts.answers_segment && !facts.probes_exhausted);
        assert_eq!(event.task.as_ref().map(|t| t.pid), Some(42));
        // With a reason flag unset the reason is decoded as before, named or not.
        let mut named = raw;
        named.flags &= !flags::NO_REASON;
        let event = old_kernel().decode(&raw_bytes(&named)).unwrap();
        assert_eq!(event.reason.map(|r| r.label()), Some("reason_0".to_owned()));
    }

    #[test]
    fn socket_state_gives_the_kinds_the_reasons_give() {
        assert_eq!(
            kind_of(&reasonless_reset(1, flags::LINGER_ZERO, 0)),
            FindingKind::LingerZero
        );
        assert_eq!(
            kind_of(&reasonless_reset(2, flags::LINGER_ZERO, 1)),
            FindingKind::LingerZero,
            "a lone unread FIN does not make a linger-0 close an abort on close"
        );
        assert_eq!(
            kind_of(&reasonless_reset(3, 0, 14)),
            FindingKind::AbortOnClose
        );
        assert_eq!(
            kind_of(&reasonless_reset(4, flags::LINGER_ZERO, 14)),
            FindingKind::AbortOnClose
        );
        let exhausted = flags::KEEPALIVE_ON | flags::PROBES_EXHAUSTED;
        let mut keepalive = reasonless_reset(5, exhausted, 0);
        keepalive.probes_out = 2;
        keepalive.keepalive_probes = 2;
        assert_eq!(kind_of(&keepalive), FindingKind::SilentTimeout);
        let event = old_kernel().decode(&raw_bytes(&keepalive)).unwrap();
        assert_eq!(event.task, None, "the keepalive timer runs in no process");
        assert_eq!(kind_of(&reasonless_reset(6, 0, 0)), FindingKind::LocalAbort);
    }

    #[test]
    fn a_reasonless_reset_answering_a_segment_ends_nothing() {
        let mut raw = reasonless_reset(9, flags::FROM_SEGMENT, 0);
        raw.old_state = ESTABLISHED;
        raw.new_state = ESTABLISHED;
        let event = old_kernel().decode(&raw_bytes(&raw)).unwrap();
        assert_eq!(event.task, None);
        let findings = Correlator::new(CorrelatorConfig::default()).on_event(&event);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].kind, FindingKind::BadState);
    }

    #[test]
    fn a_reasonless_reset_seen_without_a_socket_is_a_confirmed_no_socket() {
        let mut raw = reasonless_reset(0, flags::FROM_SEGMENT, 0);
        raw.flags = flags::FROM_SEGMENT | flags::NO_REASON;
        let event = old_kernel().decode(&raw_bytes(&raw)).unwrap();
        let findings = Correlator::new(CorrelatorConfig::default()).on_event(&event);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].kind, FindingKind::NoSocket);
        assert_eq!(findings[0].confidence, Confidence::Confirmed);
    }
}
