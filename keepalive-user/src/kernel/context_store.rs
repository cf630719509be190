//! Where the kernel side keeps each connection's context, and what that means for the hooks:
//! socket storage where the kernel lets tracing programs use it, else a bounded map keyed by
//! socket cookie, which kprobes can reach too.

use keepalive_common::CONTEXT_HASH_ENTRIES;

use super::hooks::{Hook, HookChoice, HookKind, Signal};

/// Where the kernel side keeps each connection's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextStore {
    /// Socket-local storage: freed with the socket, no limit but memory.
    SocketStorage,
    /// The bounded fallback map keyed by socket cookie, because of `why`.
    BoundedMap {
        /// Why socket storage cannot be used.
        why: &'static str,
    },
}

impl ContextStore {
    /// The start-up line's words.
    pub fn describe(self) -> String {
        match self {
            Self::SocketStorage => "socket storage (freed with each socket)".to_owned(),
            Self::BoundedMap { why } => format!(
                "bounded map of {CONTEXT_HASH_ENTRIES} connections, the least recently used \
                 forgotten ({why})"
            ),
        }
    }
}

/// Why a signal that lives in the context gets no kprobe while the context is in socket
/// storage: the kprobe would never find the context it waits on.
const KPROBE_WITHOUT_CONTEXT: &str = "kprobes cannot reach socket storage, where this signal \
                                      waits (`--hooks kprobe` keeps contexts in the bounded map)";

/// Why `hook` cannot serve `signal` while contexts live in `store`, known before attaching.
pub(crate) fn unusable(signal: &Signal, hook: &Hook, store: ContextStore) -> Option<&'static str> {
    let blind = signal.context_only
        && hook.kind() == HookKind::Kprobe
        && store == ContextStore::SocketStorage;
    blind.then_some(KPROBE_WITHOUT_CONTEXT)
}

/// First kernel whose tracing programs may use socket storage.
const TRACING_SOCKET_STORAGE: (u32, u32) = (5, 11);

/// Socket storage unless a hook that cannot reach it is forced or the kernel is too old for it.
pub(crate) fn context_store(hooks: HookChoice, release: Option<(u32, u32)>) -> ContextStore {
    if hooks == HookChoice::Only(HookKind::Kprobe) {
        ContextStore::BoundedMap {
            why: "kprobe programs cannot use socket storage",
        }
    } else if release.is_some_and(|r| r < TRACING_SOCKET_STORAGE) {
        ContextStore::BoundedMap {
            why: "tracing programs use socket storage from kernel 5.11",
        }
    } else {
        ContextStore::SocketStorage
    }
}

/// First kernel whose tracing programs may call `bpf_get_socket_cookie`.
const TRACING_SOCKET_COOKIE: (u32, u32) = (5, 12);

/// How the kernel side names a socket in records and in the bounded map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketIdentity {
    /// The socket cookie, assigned by the first hook to see the socket.
    Cookie,
    /// The socket cookie once something assigned one (the `cgroup_skb` program at the
    /// handshake, inet_diag), before that a keyed hash of the socket's address: tracing
    /// programs cannot assign cookies on this kernel.
    CookieElseHash,
}

impl SocketIdentity {
    /// Whether tracing programs may assign cookies themselves.
    pub fn helper(self) -> bool {
        self == Self::Cookie
    }

    /// The start-up line's words, when there is something to say.
    pub fn caveat(self) -> Option<&'static str> {
        (self == Self::CookieElseHash).then_some(
            "sockets no hook could give a cookie to are named by a keyed hash of their address \
             until one is assigned (tracing programs may assign cookies from kernel 5.12)",
        )
    }
}

/// The socket cookie where tracing programs may assign it, else the stored cookie or a hash.
pub(crate) fn socket_identity(release: Option<(u32, u32)>) -> SocketIdentity {
    if release.is_some_and(|r| r < TRACING_SOCKET_COOKIE) {
        SocketIdentity::CookieElseHash
    } else {
        SocketIdentity::Cookie
    }
}

/// The running kernel's (major, minor), from `/proc/sys/kernel/osrelease`.
pub(crate) fn kernel_release() -> Option<(u32, u32)> {
    parse_release(&std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::hooks::SIGNALS;

    #[test]
    fn idle_signals_get_no_kprobe_that_could_not_find_their_context() {
        let signal = |name: &str| SIGNALS.iter().find(|s| s.name == name).unwrap();
        let kprobe = |s: &'static Signal| s.hooks.iter().find(|h| h.kind() == HookKind::Kprobe);
        let map = ContextStore::BoundedMap { why: "test" };
        for name in ["send after idle", "reply after idle"] {
            let hook = kprobe(signal(name)).unwrap();
            assert!(unusable(signal(name), hook, ContextStore::SocketStorage).is_some());
            assert!(unusable(signal(name), hook, map).is_none());
            let fentry = signal(name)
                .hooks
                .iter()
                .find(|h| h.kind() == HookKind::Fentry);
            assert!(unusable(signal(name), fentry.unwrap(), ContextStore::SocketStorage).is_none());
        }
        // Reset records carry a context when there is one, and are sent without it.
        let rst = signal("RST received");
        assert!(unusable(rst, kprobe(rst).unwrap(), ContextStore::SocketStorage).is_none());
    }

    #[test]
    fn context_store_and_socket_identity_follow_the_kernel_release() {
        assert_eq!(parse_release("6.18.44-cloud-amd64\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-33-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
        assert_eq!(
            context_store(HookChoice::Auto, Some((6, 1))),
            ContextStore::SocketStorage
        );
        assert!(matches!(
            context_store(HookChoice::Auto, Some((5, 10))),
            ContextStore::BoundedMap { .. }
        ));
        assert!(matches!(
            context_store(HookChoice::Only(HookKind::Kprobe), Some((6, 18))),
            ContextStore::BoundedMap { .. }
        ));
        assert_eq!(
            socket_identity(Some((5, 10))),
            SocketIdentity::CookieElseHash
        );
        assert_eq!(
            socket_identity(Some((5, 11))),
            SocketIdentity::CookieElseHash
        );
        assert_eq!(socket_identity(Some((5, 12))), SocketIdentity::Cookie);
        assert_eq!(socket_identity(Some((6, 1))), SocketIdentity::Cookie);
    }
}
