//! Which kernel hook provides which signal.
//!
//! Each signal lists the hooks that can provide it, best first; the loader attaches the first
//! one the running kernel offers, or only those of one kind when a [`HookChoice`] forces it.
//! Tracepoints come first where they carry everything; fentry, then kprobes, hook the kernel
//! functions themselves where the tracepoints are older (before 6.10 `tcp_send_reset` has no
//! reason and misses NO_SOCKET replies).

/// How a hook reaches the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// A BTF-enabled tracepoint (`tp_btf`).
    Tracepoint,
    /// An fentry program on a kernel function (BPF trampoline).
    Fentry,
    /// A kprobe on a kernel function.
    Kprobe,
    /// A cgroup_skb program.
    CgroupSkb,
}

/// Which hooks the loader may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HookChoice {
    /// For each signal the first candidate that works.
    #[default]
    Auto,
    /// For each signal that has candidates of this kind, only those (a signal without one
    /// keeps its usual hook): proves one variant on a kernel that offers several.
    Only(HookKind),
}

impl HookChoice {
    /// The candidates of `signal` this choice allows, best first.
    pub fn candidates(self, signal: &Signal) -> Vec<&'static Hook> {
        let Self::Only(kind) = self else {
            return signal.hooks.iter().collect();
        };
        let forced: Vec<_> = signal.hooks.iter().filter(|h| h.kind() == kind).collect();
        if forced.is_empty() {
            signal.hooks.iter().collect()
        } else {
            forced
        }
    }
}

/// A kernel function and the program that hooks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionTarget {
    /// Program name in the eBPF object.
    pub program: &'static str,
    /// The kernel function.
    pub function: &'static str,
}

/// A kernel hook the eBPF object has a program for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A BTF-enabled raw tracepoint (`tp_btf`): needs no tracefs, reads arguments with types.
    BtfTracepoint {
        /// Program name in the eBPF object.
        program: &'static str,
        /// Tracepoint name (the kernel's `btf_trace_<name>`).
        tracepoint: &'static str,
        /// What the program needs of the tracepoint's reset reason argument.
        reason: TracepointReason,
    },
    /// fentry programs on kernel functions, all of which must attach.
    Fentry {
        /// The functions and their programs.
        targets: &'static [FunctionTarget],
    },
    /// kprobes on kernel functions, all of which must attach.
    Kprobe {
        /// The functions and their programs.
        targets: &'static [FunctionTarget],
    },
    /// A cgroup_skb ingress program on the cgroup v2 root.
    CgroupSkbIngress {
        /// Program name in the eBPF object.
        program: &'static str,
    },
}

/// A tracepoint program's expectation of the `enum sk_rst_reason` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracepointReason {
    /// The tracepoint has nothing to do with resets.
    Unrelated,
    /// The program reads the reason at this argument position: the tracepoint must have it
    /// there.
    At(u32),
    /// The program is the variant for kernels whose tracepoint has no reason.
    Without,
}

impl Hook {
    /// The programs in the eBPF object this hook uses.
    pub fn programs(&self) -> Vec<&'static str> {
        match self {
            Self::BtfTracepoint { program, .. } | Self::CgroupSkbIngress { program } => {
                vec![program]
            }
            Self::Fentry { targets } | Self::Kprobe { targets } => {
                targets.iter().map(|t| t.program).collect()
            }
        }
    }

    /// How the hook reaches the kernel.
    pub fn kind(&self) -> HookKind {
        match self {
            Self::BtfTracepoint { .. } => HookKind::Tracepoint,
            Self::Fentry { .. } => HookKind::Fentry,
            Self::Kprobe { .. } => HookKind::Kprobe,
            Self::CgroupSkbIngress { .. } => HookKind::CgroupSkb,
        }
    }

    /// How the start-up table names the hook, e.g. `tp_btf/tcp_send_reset`,
    /// `fentry/tcp_v4_send_reset+tcp_v6_send_reset`.
    pub fn label(&self) -> String {
        let functions = |targets: &[FunctionTarget]| {
            targets
                .iter()
                .map(|t| t.function)
                .collect::<Vec<_>>()
                .join("+")
        };
        match self {
            Self::BtfTracepoint {
                tracepoint,
                reason: TracepointReason::Without,
                ..
            } => format!("tp_btf/{tracepoint} (no reason)"),
            Self::BtfTracepoint { tracepoint, .. } => format!("tp_btf/{tracepoint}"),
            Self::Fentry { targets } => format!("fentry/{}", functions(targets)),
            Self::Kprobe { targets } => format!("kprobe/{}", functions(targets)),
            Self::CgroupSkbIngress { .. } => "cgroup_skb/ingress".to_owned(),
        }
    }
}

const SEND_RESET_TP: Hook = Hook::BtfTracepoint {
    program: "tcp_send_reset",
    tracepoint: "tcp_send_reset",
    reason: TracepointReason::At(2),
};

const fn target(program: &'static str, function: &'static str) -> FunctionTarget {
    FunctionTarget { program, function }
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
    /// Only needed when connection context lives in the fallback map (which must be cleaned
    /// up); socket storage frees itself.
    pub fallback_context_only: bool,
    /// Whether the signal lives only in the connection's context (the send after idle waits
    /// there for its reply): its kprobe variant, which cannot reach socket storage, works
    /// only with the bounded map.
    pub context_only: bool,
    /// Candidate hooks, best first.
    pub hooks: &'static [Hook],
}

/// Every signal, in the order the start-up table lists them.
pub const SIGNALS: &[Signal] = &[
    Signal {
        name: "RST sent",
        without_it: "no local_close findings for this host's own resets",
        required: true,
        fallback_context_only: false,
        context_only: false,
        hooks: &[
            SEND_RESET_TP,
            Hook::Fentry {
                targets: &[target(
                    "fentry_tcp_send_active_reset",
                    "tcp_send_active_reset",
                )],
            },
            Hook::Kprobe {
                targets: &[target(
                    "kprobe_tcp_send_active_reset",
                    "tcp_send_active_reset",
                )],
            },
            Hook::BtfTracepoint {
                program: "tcp_send_reset_no_reason",
                tracepoint: "tcp_send_reset",
                reason: TracepointReason::Without,
            },
        ],
    },
    Signal {
        name: "RST in reply",
        without_it: "no no_socket or bad_state findings (RSTs answering segments)",
        required: false,
        fallback_context_only: false,
        context_only: false,
        hooks: &[
            SEND_RESET_TP,
            Hook::Fentry {
                targets: &[
                    target("fentry_tcp_v4_send_reset", "tcp_v4_send_reset"),
                    target("fentry_tcp_v6_send_reset", "tcp_v6_send_reset"),
                ],
            },
            Hook::Kprobe {
                targets: &[
                    target("kprobe_tcp_v4_send_reset", "tcp_v4_send_reset"),
                    target("kprobe_tcp_v6_send_reset", "tcp_v6_send_reset"),
                ],
            },
        ],
    },
    Signal {
        name: "RST received",
        without_it: "no peer_reset or middlebox RST findings",
        required: true,
        fallback_context_only: false,
        context_only: false,
        hooks: &[
            Hook::BtfTracepoint {
                program: "tcp_receive_reset",
                tracepoint: "tcp_receive_reset",
                reason: TracepointReason::Unrelated,
            },
            Hook::Fentry {
                targets: &[target("fentry_tcp_reset", "tcp_reset")],
            },
            Hook::Kprobe {
                targets: &[target("kprobe_tcp_reset", "tcp_reset")],
            },
        ],
    },
    Signal {
        name: "connection lifecycle",
        without_it: "no connection context: connecting process, accepted or connected, \
                     establishment, the peer's FIN, the state before close",
        required: true,
        fallback_context_only: false,
        context_only: false,
        hooks: &[Hook::BtfTracepoint {
            program: "inet_sock_set_state",
            tracepoint: "inet_sock_set_state",
            reason: TracepointReason::Unrelated,
        }],
    },
    Signal {
        name: "socket errors",
        without_it: "no ETIMEDOUT / ECONNREFUSED deaths (silent drops go unseen)",
        required: false,
        fallback_context_only: false,
        context_only: false,
        hooks: &[
            Hook::BtfTracepoint {
                program: "inet_sk_error_report",
                tracepoint: "inet_sk_error_report",
                reason: TracepointReason::Unrelated,
            },
            Hook::Fentry {
                targets: &[target(
                    "fentry_sock_def_error_report",
                    "sock_def_error_report",
                )],
            },
        ],
    },
    Signal {
        name: "keepalive timer",
        without_it: "no keepalive probe progress",
        required: false,
        fallback_context_only: false,
        context_only: false,
        hooks: &[
            Hook::BtfTracepoint {
                program: "timer_expire_entry",
                tracepoint: "timer_expire_entry",
                reason: TracepointReason::Unrelated,
            },
            Hook::Fentry {
                targets: &[target("fentry_tcp_keepalive_timer", "tcp_keepalive_timer")],
            },
            Hook::Kprobe {
                targets: &[target("kprobe_tcp_keepalive_timer", "tcp_keepalive_timer")],
            },
        ],
    },
    Signal {
        name: "send after idle",
        without_it: "no learned idle timeout (survived gaps)",
        required: false,
        fallback_context_only: false,
        context_only: true,
        hooks: &[
            Hook::BtfTracepoint {
                program: "tcp_sendmsg_locked",
                tracepoint: "tcp_sendmsg_locked",
                reason: TracepointReason::Unrelated,
            },
            Hook::Fentry {
                targets: &[target("fentry_tcp_sendmsg", "tcp_sendmsg")],
            },
            Hook::Kprobe {
                targets: &[target("kprobe_tcp_sendmsg", "tcp_sendmsg")],
            },
        ],
    },
    Signal {
        name: "reply after idle",
        without_it: "no learned idle timeout (survived gaps)",
        required: false,
        fallback_context_only: false,
        context_only: true,
        hooks: &[
            Hook::BtfTracepoint {
                program: "sock_recv_length",
                tracepoint: "sock_recv_length",
                reason: TracepointReason::Unrelated,
            },
            Hook::Fentry {
                targets: &[target("fentry_tcp_rcv_established", "tcp_rcv_established")],
            },
            Hook::Kprobe {
                targets: &[target("kprobe_tcp_rcv_established", "tcp_rcv_established")],
            },
        ],
    },
    Signal {
        name: "segment TTL",
        without_it: "no TTL evidence (forged RSTs cannot be told from the peer's)",
        required: false,
        fallback_context_only: false,
        context_only: false,
        hooks: &[Hook::CgroupSkbIngress {
            program: "segment_ttl",
        }],
    },
    Signal {
        name: "context clean-up",
        without_it: "contexts of destroyed sockets stay in the bounded map until evicted",
        required: false,
        fallback_context_only: true,
        context_only: false,
        hooks: &[Hook::BtfTracepoint {
            program: "tcp_destroy_sock",
            tracepoint: "tcp_destroy_sock",
            reason: TracepointReason::Unrelated,
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
    fn every_signal_has_a_hook_and_programs_serve_one_signal_family() {
        assert!(SIGNALS.iter().all(|s| !s.hooks.is_empty()));
        // A program may serve several signals only as the same hook (the tcp_send_reset
        // tracepoint sees both kinds of RST sent).
        let hooks: Vec<&Hook> = SIGNALS.iter().flat_map(|s| s.hooks.iter()).collect();
        for (i, a) in hooks.iter().enumerate() {
            for b in &hooks[i + 1..] {
                let shared = a.programs().iter().any(|p| b.programs().contains(p));
                assert!(!shared || a == b, "{a:?} and {b:?} share a program");
            }
        }
        assert_eq!(SIGNALS[0].hooks[0].label(), "tp_btf/tcp_send_reset");
        assert_eq!(
            SIGNALS[1].hooks[1].label(),
            "fentry/tcp_v4_send_reset+tcp_v6_send_reset"
        );
        assert_eq!(
            SIGNALS[0].hooks[3].label(),
            "tp_btf/tcp_send_reset (no reason)"
        );
    }

    #[test]
    fn a_forced_kind_keeps_signals_that_have_no_such_hook() {
        let fentry = HookChoice::Only(HookKind::Fentry);
        for signal in SIGNALS {
            let candidates = fentry.candidates(signal);
            let offers = signal.hooks.iter().any(|h| h.kind() == HookKind::Fentry);
            assert_eq!(
                candidates.iter().all(|h| h.kind() == HookKind::Fentry),
                offers,
                "{}",
                signal.name
            );
            assert!(!candidates.is_empty());
        }
        let names = |choice: HookChoice, signal: &Signal| -> Vec<String> {
            choice
                .candidates(signal)
                .iter()
                .map(|h| h.label())
                .collect()
        };
        assert_eq!(
            names(HookChoice::Only(HookKind::Tracepoint), &SIGNALS[0]),
            ["tp_btf/tcp_send_reset", "tp_btf/tcp_send_reset (no reason)"]
        );
        assert_eq!(names(HookChoice::Auto, &SIGNALS[2]).len(), 3);
    }
}
