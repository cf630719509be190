//! Which kernel hook provides which signal.
//!
//! Each signal lists the hooks that can provide it, best first; the loader attaches the first
//! one the running kernel offers. Kernels that allow fentry or kprobes get their own variants
//! here (e.g. fentry on `tcp_reset` for "RST received") without changes elsewhere.

/// A kernel hook the eBPF object has a program for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A BTF-enabled raw tracepoint (`tp_btf`): needs no tracefs, reads arguments with types.
    BtfTracepoint {
        /// Program name in the eBPF object.
        program: &'static str,
        /// Tracepoint name (the kernel's `btf_trace_<name>`).
        tracepoint: &'static str,
    },
    /// A cgroup_skb ingress program on the cgroup v2 root.
    CgroupSkbIngress {
        /// Program name in the eBPF object.
        program: &'static str,
    },
}

impl Hook {
    /// The program's name in the eBPF object.
    pub fn program(&self) -> &'static str {
        match self {
            Self::BtfTracepoint { program, .. } | Self::CgroupSkbIngress { program } => program,
        }
    }

    /// How the start-up table names the hook, e.g. `tp_btf/tcp_send_reset`.
    pub fn label(&self) -> String {
        match self {
            Self::BtfTracepoint { tracepoint, .. } => format!("tp_btf/{tracepoint}"),
            Self::CgroupSkbIngress { .. } => "cgroup_skb/ingress".to_owned(),
        }
    }
}

/// Something the observer wants to see, and the hooks that can show it.
#[derive(Debug)]
pub struct Signal {
    /// Short name for the start-up table.
    pub name: &'static str,
    /// What the user loses when no hook provides it.
    pub without_it: &'static str,
    /// Whether the daemon refuses to run without it.
    pub required: bool,
    /// Candidate hooks, best first.
    pub hooks: &'static [Hook],
}

/// Every signal, in the order the start-up table lists them.
pub const SIGNALS: &[Signal] = &[
    Signal {
        name: "RST sent",
        without_it: "no local_close or no_socket findings",
        required: true,
        hooks: &[Hook::BtfTracepoint {
            program: "tcp_send_reset",
            tracepoint: "tcp_send_reset",
        }],
    },
    Signal {
        name: "RST received",
        without_it: "no peer_reset or middlebox RST findings",
        required: true,
        hooks: &[Hook::BtfTracepoint {
            program: "tcp_receive_reset",
            tracepoint: "tcp_receive_reset",
        }],
    },
    Signal {
        name: "state changes",
        without_it: "no connection lifecycle, connecting process or eviction of closed sockets",
        required: true,
        hooks: &[Hook::BtfTracepoint {
            program: "inet_sock_set_state",
            tracepoint: "inet_sock_set_state",
        }],
    },
    Signal {
        name: "socket errors",
        without_it: "no ETIMEDOUT / ECONNREFUSED deaths (silent drops go unseen)",
        required: false,
        hooks: &[Hook::BtfTracepoint {
            program: "inet_sk_error_report",
            tracepoint: "inet_sk_error_report",
        }],
    },
    Signal {
        name: "keepalive timer",
        without_it: "no keepalive probe progress",
        required: false,
        hooks: &[Hook::BtfTracepoint {
            program: "timer_expire_entry",
            tracepoint: "timer_expire_entry",
        }],
    },
    Signal {
        name: "send after idle",
        without_it: "no learned idle timeout (survived gaps)",
        required: false,
        hooks: &[Hook::BtfTracepoint {
            program: "tcp_sendmsg_locked",
            tracepoint: "tcp_sendmsg_locked",
        }],
    },
    Signal {
        name: "reply after idle",
        without_it: "no learned idle timeout (survived gaps)",
        required: false,
        hooks: &[Hook::BtfTracepoint {
            program: "sock_recv_length",
            tracepoint: "sock_recv_length",
        }],
    },
    Signal {
        name: "segment TTL",
        without_it: "no TTL evidence (forged RSTs cannot be told from the peer's)",
        required: false,
        hooks: &[Hook::CgroupSkbIngress {
            program: "segment_ttl",
        }],
    },
];

/// What happened to one signal at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    /// The signal's name.
    pub signal: &'static str,
    /// The hook that was attached, or the best candidate when none was.
    pub hook: String,
    /// `Err(why)` when no hook could be attached.
    pub attached: Result<(), String>,
    /// What the user loses when it is not attached.
    pub without_it: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_signal_has_a_hook_and_unique_programs() {
        let mut programs: Vec<_> = SIGNALS
            .iter()
            .flat_map(|s| s.hooks.iter().map(Hook::program))
            .collect();
        assert!(SIGNALS.iter().all(|s| !s.hooks.is_empty()));
        let before = programs.len();
        programs.sort_unstable();
        programs.dedup();
        assert_eq!(programs.len(), before);
        assert_eq!(
            SIGNALS[0].hooks[0].label(),
            "tp_btf/tcp_send_reset".to_owned()
        );
    }
}
