//! Reads the running kernel's BTF: struct member offsets for the programs, the names of
//! `enum sk_rst_reason`, and which tracepoints and functions exist.
//!
//! Rust eBPF objects get no CO-RE relocations, so every offset the programs use is looked up
//! here at start-up and handed over in [`ProbeConfig`](keepalive_common::ProbeConfig).

use std::{collections::BTreeMap, path::Path};

use btf::btf::{Btf, FlattenedType, FunctionParam, Type};
use keepalive_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Errors reading the kernel's BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read or parsed.
    #[error("cannot read kernel BTF from {path} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")]
    Unreadable {
        /// The file.
        path: String,
        /// What the parser said.
        source: btf::error::Error,
    },
    /// A struct the programs need does not exist in this kernel.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    /// A member the programs need does not exist.
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember {
        /// Struct name.
        strukt: String,
        /// Dotted member path.
        member: String,
    },
    /// A member exists but is not what the programs read.
    #[error(
        "kernel BTF: {strukt}.{member} is {got_bits} bits at bit {bit_offset}, expected a \
         byte-aligned {expected_bytes}-byte field"
    )]
    UnexpectedLayout {
        /// Struct name.
        strukt: String,
        /// Dotted member path.
        member: String,
        /// Size found, in bits.
        got_bits: u32,
        /// Offset found, in bits.
        bit_offset: u32,
        /// Size the programs read, in bytes.
        expected_bytes: u32,
    },
    /// An enum the daemon needs does not exist.
    #[error("kernel BTF has no enum {0}")]
    NoEnum(String),
    /// An enumerator the programs need does not exist.
    #[error("kernel BTF: enum {enumeration} has no value {name}")]
    NoEnumValue {
        /// Enum name.
        enumeration: String,
        /// Enumerator name.
        name: String,
    },
}

/// The running kernel's BTF, parsed once.
pub struct KernelBtf {
    btf: Btf,
}

/// A member's place in its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberLayout {
    /// Offset from the start of the outer struct, in bits.
    pub bit_offset: u32,
    /// Size in bits.
    pub bits: u32,
}

impl KernelBtf {
    /// Parses a BTF file (normally [`VMLINUX_BTF`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let btf = Btf::from_file(path).map_err(|source| BtfError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { btf })
    }

    fn named(&self, name: &str, want: impl Fn(&Type) -> bool) -> Option<&FlattenedType> {
        self.btf
            .get_types()
            .iter()
            .find(|t| t.num_refs == 0 && t.name.as_deref() == Some(name) && want(&t.base_type))
    }

    /// Looks up `path` (members separated by dots) in `struct strukt`, descending into
    /// anonymous structs and unions on the way, as C does.
    pub fn member(&self, strukt: &str, path: &str) -> Result<MemberLayout, BtfError> {
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: path.to_owned(),
        };
        let mut ty = self
            .named(strukt, |t| matches!(t, Type::Struct(_)))
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut layout = MemberLayout {
            bit_offset: 0,
            bits: ty.bits,
        };
        for name in path.split('.') {
            let found = self.find_member(ty, name).ok_or_else(no_member)?;
            ty = self
                .btf
                .get_type_by_id(found.type_id)
                .map_err(|_| no_member())?;
            layout = MemberLayout {
                bit_offset: layout.bit_offset + found.bit_offset,
                bits: found.bitfield_bits.unwrap_or(ty.bits),
            };
        }
        Ok(layout)
    }

    /// Byte offset of a member the programs read as a `expected_bytes`-sized value.
    pub fn byte_offset(
        &self,
        strukt: &str,
        path: &str,
        expected_bytes: u32,
    ) -> Result<u32, BtfError> {
        let layout = self.member(strukt, path)?;
        if layout.bit_offset % 8 != 0 || layout.bits != expected_bytes * 8 {
            return Err(BtfError::UnexpectedLayout {
                strukt: strukt.to_owned(),
                member: path.to_owned(),
                got_bits: layout.bits,
                bit_offset: layout.bit_offset,
                expected_bytes,
            });
        }
        Ok(layout.bit_offset / 8)
    }

    /// Depth-first search through anonymous members, as C name lookup does.
    fn find_member(&self, ty: &FlattenedType, name: &str) -> Option<FoundMember> {
        let Type::Struct(s) = &ty.base_type else {
            return None;
        };
        // The parser reports an anonymous member's name as `None` or as an empty string.
        s.members
            .iter()
            .find_map(|m| match m.name.as_deref().filter(|n| !n.is_empty()) {
                Some(n) if n == name => Some(FoundMember {
                    bit_offset: m.offset,
                    type_id: m.type_id,
                    bitfield_bits: m.bits.filter(|&b| b != 0),
                }),
                Some(_) => None,
                None => {
                    let anonymous = self.btf.get_type_by_id(m.type_id).ok()?;
                    self.find_member(anonymous, name).map(|inner| FoundMember {
                        bit_offset: m.offset + inner.bit_offset,
                        ..inner
                    })
                }
            })
    }

    /// All enumerators of `enum name`.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let ty = self
            .named(name, |t| matches!(t, Type::Enum32(_) | Type::Enum64(_)))
            .ok_or_else(|| BtfError::NoEnum(name.to_owned()))?;
        let (Type::Enum32(e) | Type::Enum64(e)) = &ty.base_type else {
            return Err(BtfError::NoEnum(name.to_owned()));
        };
        Ok(e.entries
            .iter()
            .filter_map(|entry| Some((entry.name.clone()?, entry.value)))
            .collect())
    }

    /// The arguments of kernel function `name` (its `FUNC` prototype), or `None` when the
    /// kernel's BTF has no such function.
    pub fn function_args(&self, name: &str) -> Option<FunctionArgs> {
        let function = self
            .btf
            .get_types()
            .iter()
            .find(|t| t.is_function && t.num_refs == 0 && t.name.as_deref() == Some(name))?;
        let Type::FunctionProto(proto) = &function.base_type else {
            return None;
        };
        Some(self.args_of(&proto.params))
    }

    /// The arguments a `tp_btf` program gets from tracepoint `name` (the prototype of its
    /// `btf_trace_<name>` typedef without the leading context pointer), or `None` when the
    /// kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<FunctionArgs> {
        let typedef = format!("btf_trace_{name}");
        let tracepoint = self
            .btf
            .get_types()
            .iter()
            .find(|t| t.name.as_deref() == Some(typedef.as_str()))?;
        let Type::FunctionProto(proto) = &tracepoint.base_type else {
            return None;
        };
        Some(self.args_of(proto.params.get(1..).unwrap_or_default()))
    }

    fn args_of(&self, params: &[FunctionParam]) -> FunctionArgs {
        let is_reason = |param: &FunctionParam| {
            self.btf
                .get_type_by_id(param.type_id)
                .is_ok_and(|t| match &t.base_type {
                    // Named through the enumerators: a `const enum` parameter carries no name.
                    Type::Enum32(e) | Type::Enum64(e) if t.num_refs == 0 => {
                        e.entries.iter().any(|entry| {
                            entry
                                .name
                                .as_deref()
                                .is_some_and(|n| n.starts_with("SK_RST_REASON_"))
                        })
                    }
                    _ => false,
                })
        };
        FunctionArgs {
            count: u32::try_from(params.len()).unwrap_or(u32::MAX),
            reason: params
                .iter()
                .position(is_reason)
                .and_then(|p| u32::try_from(p).ok()),
        }
    }

    /// The value of one enumerator.
    pub fn enum_value(&self, enumeration: &str, name: &str) -> Result<i64, BtfError> {
        self.enum_values(enumeration)?
            .into_iter()
            .find_map(|(n, v)| (n == name).then_some(v))
            .ok_or_else(|| BtfError::NoEnumValue {
                enumeration: enumeration.to_owned(),
                name: name.to_owned(),
            })
    }

    /// Whether the kernel has a BTF-enabled tracepoint of this name (`btf_trace_<name>`):
    /// what a `tp_btf` program attaches to.
    pub fn has_btf_tracepoint(&self, name: &str) -> bool {
        let typedef = format!("btf_trace_{name}");
        self.btf
            .get_types()
            .iter()
            .any(|t| t.name.as_deref() == Some(typedef.as_str()))
    }

    /// Names of `enum sk_rst_reason` by value, without the `SK_RST_REASON_` prefix; empty on
    /// kernels before 6.10, which give no reason.
    pub fn reset_reasons(&self) -> BTreeMap<u32, String> {
        self.enum_values("sk_rst_reason")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| {
                let value = u32::try_from(value).ok()?;
                let name = name
                    .strip_prefix("SK_RST_REASON_")
                    .unwrap_or(&name)
                    .to_owned();
                Some((value, name))
            })
            .collect()
    }

    /// Offset in the socket of the timer `tcp_keepalive_timer` runs from:
    /// `inet_connection_sock.icsk_keepalive_timer` where it exists (seen on Debian's 6.1 and
    /// 6.12), else `sock.sk_timer` (6.18).
    fn keepalive_timer(&self) -> Result<u32, BtfError> {
        self.member("tcp_sock", "inet_conn.icsk_keepalive_timer")
            .or_else(|_| self.member("sock", "sk_timer"))
            .map(|m| m.bit_offset / 8)
    }

    /// Every offset the programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let sock = |path, bytes| self.byte_offset("sock", path, bytes);
        let tcp = |path, bytes| self.byte_offset("tcp_sock", path, bytes);
        let skb = |path, bytes| self.byte_offset("sk_buff", path, bytes);
        Ok(KernelOffsets {
            skc_family: sock("__sk_common.skc_family", 2)?,
            skc_state: sock("__sk_common.skc_state", 1)?,
            skc_daddr: sock("__sk_common.skc_daddr", 4)?,
            skc_rcv_saddr: sock("__sk_common.skc_rcv_saddr", 4)?,
            skc_dport: sock("__sk_common.skc_dport", 2)?,
            skc_num: sock("__sk_common.skc_num", 2)?,
            inet_sport: self.byte_offset("inet_sock", "inet_sport", 2)?,
            skc_v6_daddr: sock("__sk_common.skc_v6_daddr", 16)?,
            skc_v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr", 16)?,
            skc_net: sock("__sk_common.skc_net", 8)?,
            skc_flags: sock("__sk_common.skc_flags", 8)?,
            skc_cookie: sock("__sk_common.skc_cookie", 8)?,
            timer_function: self.byte_offset("timer_list", "function", 8)?,
            net_ns_inum: self.byte_offset("net", "ns.inum", 4)?,
            sk_protocol: sock("sk_protocol", 2)?,
            sk_type: sock("sk_type", 2)?,
            sk_err: sock("sk_err", 4)?,
            sk_timer: self.keepalive_timer()?,
            rcv_tstamp: tcp("rcv_tstamp", 4)?,
            lsndtime: tcp("lsndtime", 4)?,
            keepalive_time: tcp("keepalive_time", 4)?,
            keepalive_intvl: tcp("keepalive_intvl", 4)?,
            keepalive_probes: tcp("keepalive_probes", 1)?,
            icsk_probes_out: tcp("inet_conn.icsk_probes_out", 1)?,
            icsk_retransmits: tcp("inet_conn.icsk_retransmits", 1)?,
            skb_head: skb("head", 8)?,
            skb_network_header: skb("network_header", 2)?,
            skb_transport_header: skb("transport_header", 2)?,
            sk_lingertime: sock("sk_lingertime", 8)?,
            rcv_nxt: tcp("rcv_nxt", 4)?,
            copied_seq: tcp("copied_seq", 4)?,
            net_keepalive_probes: self.byte_offset("net", "ipv4.sysctl_tcp_keepalive_probes", 1)?,
            net_cookie: self.byte_offset("net", "net_cookie", 8)?,
            skb_dev: skb("dev", 8)?,
            dev_nd_net: self.byte_offset("net_device", "nd_net", 8)?,
            sk_max_ack_backlog: sock("sk_max_ack_backlog", 4)?,
        })
    }
}

/// The arguments of a kernel function or tracepoint, as its BTF prototype declares them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionArgs {
    /// How many arguments there are.
    pub count: u32,
    /// Position of the `enum sk_rst_reason` argument, when there is one.
    pub reason: Option<u32>,
}

struct FoundMember {
    bit_offset: u32,
    type_id: u32,
    bitfield_bits: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> Option<KernelBtf> {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: {VMLINUX_BTF} does not exist on this machine");
            return None;
        }
        Some(KernelBtf::from_file(VMLINUX_BTF).expect("vmlinux BTF parses"))
    }

    #[test]
    fn offsets_match_the_running_kernel() {
        let Some(btf) = kernel() else { return };
        let offsets = btf.kernel_offsets().expect("all members found");
        // Fields at the very start of struct sock_common have been stable for a decade.
        assert_eq!(offsets.skc_daddr, 0);
        assert_eq!(offsets.skc_rcv_saddr, 4);
        // Offsets measured with clang's offsetof against this project's machines' 6.18
        // kernel (the design notes handed to the project); other kernels only need them to be
        // inside the structs.
        if std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .is_ok_and(|r| r.starts_with("6.18"))
        {
            assert_eq!(offsets.sk_timer, 448);
            assert_eq!(offsets.lsndtime, 1584);
            assert_eq!(offsets.rcv_tstamp, 1724);
            assert_eq!(offsets.keepalive_time, 2220);
        }
        let sock_bits = btf.member("sock", "sk_timer").unwrap().bit_offset;
        assert!(offsets.sk_err * 8 < sock_bits + 4096);
    }

    #[test]
    fn missing_things_are_named_in_errors() {
        let Some(btf) = kernel() else { return };
        let err = btf.member("sock", "no_such_member").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF: struct sock has no member no_such_member"
        );
        let err = btf
            .byte_offset("tcp_sock", "keepalive_probes", 4)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected a byte-aligned 4-byte field"),
            "{err}"
        );
        assert!(matches!(
            btf.member("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn reset_reasons_and_tracepoints_are_found() {
        let Some(btf) = kernel() else { return };
        let reasons = btf.reset_reasons();
        assert!(reasons.values().any(|n| n == "NO_SOCKET"), "{reasons:?}");
        assert!(
            reasons.values().any(|n| n == "TCP_KEEPALIVE_TIMEOUT"),
            "{reasons:?}"
        );
        assert!(btf.has_btf_tracepoint("inet_sock_set_state"));
        assert!(!btf.has_btf_tracepoint("no_such_tracepoint"));
        assert!(btf.enum_value("sock_flags", "SOCK_KEEPOPEN").is_ok());
    }

    #[test]
    fn function_prototypes_give_argument_positions() {
        let Some(btf) = kernel() else { return };
        let reset = btf.function_args("tcp_reset").expect("tcp_reset is in BTF");
        assert_eq!(reset.reason, None);
        assert!(reset.count >= 1, "{reset:?}");
        assert_eq!(
            btf.tracepoint_args("tcp_receive_reset"),
            Some(FunctionArgs {
                count: 1,
                reason: None
            })
        );
        assert_eq!(btf.function_args("no_such_function"), None);
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
        // The reason moved between kernels; from 6.10 every reset function has one.
        if !btf.reset_reasons().is_empty() {
            let active = btf.function_args("tcp_send_active_reset").unwrap();
            assert_eq!(active.reason, Some(active.count - 1), "{active:?}");
            assert_eq!(
                btf.function_args("tcp_v4_send_reset").unwrap().reason,
                Some(2)
            );
            assert_eq!(
                btf.tracepoint_args("tcp_send_reset").unwrap().reason,
                Some(2)
            );
        }
    }
}
