//! The repository the tools were built from: where it is, and the toolchains pinned in its root
//! `Cargo.toml` under `[workspace.metadata.toolchains]`, the one place for them (keepalive-user's
//! build script reads the same table through `cargo metadata`).

use std::path::{Path, PathBuf};

const MANIFEST: &str = include_str!("../../Cargo.toml");
const TABLE: &str = "[workspace.metadata.toolchains]";

/// The workspace root (the parent of this crate's directory).
pub fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The toolchain of the host crates.
pub fn host_toolchain() -> &'static str {
    pinned(MANIFEST, "host").expect("the root Cargo.toml pins `host` (checked by a test)")
}

/// The nightly of the eBPF crate.
pub fn ebpf_toolchain() -> &'static str {
    pinned(MANIFEST, "ebpf").expect("the root Cargo.toml pins `ebpf` (checked by a test)")
}

/// The string value of `key` in the toolchains table of `manifest`.
fn pinned<'a>(manifest: &'a str, key: &str) -> Option<&'a str> {
    let mut in_table = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line == TABLE;
        } else if in_table
            && let Some((name, value)) = line.split_once('=')
            && name.trim() == key
        {
            return value.trim().strip_prefix('"')?.strip_suffix('"');
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_manifest_pins_both_toolchains() {
        assert!(!host_toolchain().is_empty());
        assert!(ebpf_toolchain().starts_with("nightly-"));
    }

    #[test]
    fn reads_only_the_toolchains_table() {
        let manifest = "[package]\nhost = \"no\"\n\n[workspace.metadata.toolchains]\n# why\nhost = \"1.2.3\"\nebpf = 4\n[other]\nx = \"y\"\n";
        assert_eq!(pinned(manifest, "host"), Some("1.2.3"));
        assert_eq!(pinned(manifest, "ebpf"), None);
        assert_eq!(pinned(manifest, "x"), None);
    }
}
