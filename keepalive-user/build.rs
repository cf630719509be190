use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The eBPF nightly is pinned to the LLVM major that bpf-linker 0.13 is built against (22);
/// newer nightlies produce bitcode bpf-linker rejects. `cargo xtask setup` installs it.
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "keepalive-ebpf")
        .ok_or_else(|| anyhow!("keepalive-ebpf package not found"))?;
    let manifest_path = &ebpf_package.manifest_path;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?;
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(EBPF_TOOLCHAIN))
}
