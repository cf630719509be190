use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata {
        packages,
        workspace_metadata,
        workspace_root,
        ..
    } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    // The eBPF nightly is pinned in the root Cargo.toml, which `cargo xtask setup` reads too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace_root.join("Cargo.toml")
    );
    let ebpf_toolchain = workspace_metadata["toolchains"]["ebpf"]
        .as_str()
        .ok_or_else(|| {
            anyhow!("the root Cargo.toml has no [workspace.metadata.toolchains] ebpf")
        })?;
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
    aya_build::build_ebpf([package], Toolchain::Custom(ebpf_toolchain))
}
