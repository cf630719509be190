//! Kernel modules the guest's middlebox needs (veth, nftables, conntrack and their
//! dependencies), taken from the kernel package through the `modules.dep` depmod writes for it,
//! and decompressed
//! here, so that the guest's busybox `insmod` loads them whatever compression the package
//! uses (6.12's are `.ko.xz`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What the middlebox of the ladder needs: veth pairs between namespaces, an nftables table
/// matching conntrack state, and `reject with tcp reset` in an `inet` table.
pub const MIDDLEBOX: &[&str] = &[
    "veth",
    "nf_conntrack",
    "nf_tables",
    "nft_ct",
    "nft_reject_inet",
];

/// One module to load: its name and its uncompressed object.
pub struct Module {
    /// The module's name, e.g. `nf_tables`.
    pub name: String,
    /// The `.ko` file's bytes.
    pub object: Vec<u8>,
}

/// `wanted` and everything they depend on, dependencies first, from the package unpacked at
/// `root`; those built into the kernel need no loading. Fails naming the first module the
/// kernel has neither built in nor as a module.
pub fn closure(root: &Path, release: &str, wanted: &[&str]) -> Result<Vec<Module>> {
    let dir = root.join("lib/modules").join(release);
    let read = |file: &str| {
        fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading {}/{file}", dir.display()))
    };
    // The package leaves `modules.dep` to depmod at installation.
    let depmod = Command::new("depmod")
        .arg("-b")
        .arg(root)
        .arg(release)
        .output()
        .context("running depmod (install kmod: `cargo xtask setup`)")?;
    if !depmod.status.success() {
        bail!(
            "depmod for kernel {release}: {}",
            String::from_utf8_lossy(&depmod.stderr).trim()
        );
    }
    let dep = read("modules.dep")?;
    let builtin = read("modules.builtin")?;
    let table = parse_dep(&dep);
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        match table.keys().find(|path| module_name(path) == *name) {
            Some(path) => visit(path, &table, &mut seen, &mut order),
            None if builtin.lines().any(|path| module_name(path) == *name) => {}
            None => bail!("kernel {release} has no module {name}"),
        }
    }
    order
        .into_iter()
        .map(|path| {
            Ok(Module {
                name: module_name(path).to_owned(),
                object: decompress(&dir.join(path))?,
            })
        })
        .collect()
}

/// `modules.dep`: each line is `path: dependency paths…`, all relative to the modules dir.
fn parse_dep(text: &str) -> BTreeMap<&str, Vec<&str>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((module.trim(), deps.split_whitespace().collect()))
        })
        .collect()
}

/// Dependencies before the module that needs them.
fn visit<'a>(
    path: &'a str,
    table: &BTreeMap<&'a str, Vec<&'a str>>,
    seen: &mut BTreeSet<&'a str>,
    order: &mut Vec<&'a str>,
) {
    if !seen.insert(path) {
        return;
    }
    for dep in table.get(path).into_iter().flatten() {
        visit(dep, table, seen, order);
    }
    order.push(path);
}

/// `kernel/net/netfilter/nf_tables.ko.xz` → `nf_tables`.
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map_or(file, |(name, _)| name)
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    } else if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        bail!(
            "{}: a compression this test cannot undo (xz and gzip only)",
            path.display()
        );
    };
    // busybox-static (installed by setup for the guest's shell) decompresses both.
    let output = Command::new("/bin/busybox")
        .args([tool, "-dc"])
        .arg(path)
        .output()
        .with_context(|| format!("running busybox {tool} on {}", path.display()))?;
    if !output.status.success() {
        bail!(
            "decompressing {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_come_first_and_once() {
        let dep = "kernel/net/netfilter/nft_ct.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz \
                   kernel/net/netfilter/nf_tables.ko.xz kernel/lib/libcrc32c.ko.xz\n\
                   kernel/net/netfilter/nf_conntrack.ko.xz: kernel/lib/libcrc32c.ko.xz\n\
                   kernel/net/netfilter/nf_tables.ko.xz: kernel/lib/libcrc32c.ko.xz\n\
                   kernel/lib/libcrc32c.ko.xz:\n";
        let table = parse_dep(dep);
        let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
        visit(
            "kernel/net/netfilter/nft_ct.ko.xz",
            &table,
            &mut seen,
            &mut order,
        );
        visit(
            "kernel/net/netfilter/nf_tables.ko.xz",
            &table,
            &mut seen,
            &mut order,
        );
        let names: Vec<&str> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["libcrc32c", "nf_conntrack", "nf_tables", "nft_ct"]);
        assert_eq!(module_name("kernel/drivers/net/veth.ko"), "veth");
    }
}
