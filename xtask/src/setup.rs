//! `cargo xtask setup`: installs what this machine lacks, skips what is there, checks the kernel.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use keepalive_lab::workspace::{ebpf_toolchain, host_toolchain};

use crate::cmd;

const HOST_COMPONENTS: &[&str] = &["clippy", "rustfmt"];
const BPF_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages and why the project needs them.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "building bpf-linker"),
    ("libpolly-22-dev", "building bpf-linker"),
    ("libzstd-dev", "building bpf-linker"),
    ("iproute2", "lab tests (ip)"),
    ("nftables", "lab tests (nft)"),
    ("conntrack", "lab tests (conntrack)"),
    ("procps", "lab tests (sysctl)"),
    ("bpftrace", "cargo xtask bench (the bpftrace comparison)"),
    ("bpftool", "cargo xtask bench (program and map names)"),
    ("nginx", "cargo xtask lab (the HTTP servers)"),
    ("python3-urllib3", "cargo xtask lab (the HTTP client)"),
    ("qemu-system-x86", "cargo xtask vm-test (qemu)"),
    ("busybox-static", "cargo xtask vm-test (guest shell)"),
    ("lz4", "cargo xtask vm-test (6.1 kernel image)"),
    ("zstd", "cargo xtask vm-test (6.12 kernel image)"),
    (
        "kmod",
        "cargo xtask vm-test (depmod, for the guest middlebox's modules)",
    ),
    (
        "prometheus",
        "the metrics tests (promtool test rules, a Prometheus server scraping the daemon)",
    ),
];
/// The journald test starts this binary when no journal runs; package `systemd` provides it.
const JOURNALD: &str = "/lib/systemd/systemd-journald";

const BTF: &str = "/sys/kernel/btf/vmlinux";
/// First kernel whose `tcp_send_reset` tracepoint carries the reset reason.
const RESET_REASON_KERNEL: (u32, u32) = (6, 10);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Say what is already present as well as what gets installed.
    Verbose,
    /// Say only what gets installed and what is wrong.
    Quiet,
}

impl Report {
    fn present(self, what: &str) {
        if self == Report::Verbose {
            println!("  present: {what}");
        }
    }

    fn note(self, what: &str) {
        if self == Report::Verbose {
            println!("  note: {what}");
        }
    }

    fn step(self, what: &str) {
        if self == Report::Verbose {
            println!("==> {what}");
        }
    }
}

pub fn run(report: Report) -> Result<()> {
    report.step("kernel");
    check_kernel(report);
    report.step("system packages");
    install_packages(report)?;
    report.step("rust toolchains");
    install_toolchain(report, host_toolchain(), HOST_COMPONENTS)?;
    install_toolchain(report, ebpf_toolchain(), BPF_COMPONENTS)?;
    report.step("bpf-linker");
    install_bpf_linker(report)?;
    report.step("setup complete");
    Ok(())
}

/// Warns about what the daemon will miss on this kernel; never fails.
fn check_kernel(report: Report) {
    if Path::new(BTF).exists() {
        report.present(&format!("kernel BTF ({BTF})"));
    } else {
        warn(&format!(
            "{BTF} is missing: the daemon cannot read kernel struct offsets or attach tp_btf \
             programs (needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
        ));
    }

    match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) => match kernel_version(&release) {
            Some(version) if version >= RESET_REASON_KERNEL => {
                report.present(&format!(
                    "kernel {} (reset reasons available)",
                    release.trim()
                ));
            }
            Some(_) => warn(&format!(
                "kernel {} is older than {}.{}: resets will be reported without their reason",
                release.trim(),
                RESET_REASON_KERNEL.0,
                RESET_REASON_KERNEL.1
            )),
            None => warn(&format!("cannot parse kernel release {:?}", release.trim())),
        },
        Err(err) => warn(&format!("cannot read the kernel release: {err}")),
    }

    match fs::read_to_string("/proc/self/mounts") {
        Ok(mounts) => match keepalive_lab::cgroup2_mount(&mounts) {
            Some(path) => report.present(&format!("cgroup v2 mounted at {path}")),
            None => warn(
                "no cgroup v2 mount: the TTL of SYN/SYN-ACK/RST segments will not be observed \
                 (mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`)",
            ),
        },
        Err(err) => warn(&format!("cannot read /proc/self/mounts: {err}")),
    }

    if !keepalive_lab::is_root() {
        report.note(
            "not running as root: the daemon needs root (or CAP_BPF, CAP_PERFMON and \
             CAP_NET_ADMIN); `cargo xtask run` uses sudo",
        );
    }
}

fn install_packages(report: Report) -> Result<()> {
    let mut needed: Vec<&str> = PACKAGES.iter().map(|(name, _)| *name).collect();
    if Path::new(JOURNALD).exists() {
        report.present(JOURNALD);
    } else {
        needed.push("systemd");
    }

    if which::which("dpkg-query").is_err() {
        warn(&format!(
            "dpkg-query not found (not a Debian-based system?): cannot check system packages; \
             make sure the equivalents of these are installed: {}",
            needed.join(" ")
        ));
        return Ok(());
    }

    let mut missing = Vec::new();
    for name in needed {
        if package_installed(name)? {
            report.present(&format!("package {name}"));
        } else {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    let list = missing.join(" ");
    println!("missing system packages:");
    for name in &missing {
        let why = PACKAGES
            .iter()
            .find(|(package, _)| package == name)
            .map_or("the journald test (systemd-journald)", |(_, why)| why);
        println!("  {name}: for {why}");
    }
    if !keepalive_lab::is_root() {
        bail!(
            "installing system packages needs root: run `cargo xtask setup` as root, or install \
             them by hand: `sudo apt-get install -y {list}`"
        );
    }
    if which::which("apt-get").is_err() {
        bail!("apt-get not found: install these packages by hand: {list}");
    }
    println!("installing system packages: {list}");
    cmd::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install system packages: {list}"))
}

fn package_installed(name: &str) -> Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .context("cannot run dpkg-query")?;
    // dpkg-query exits non-zero for a package it has never heard of.
    Ok(
        output.status.success()
            && String::from_utf8_lossy(&output.stdout) == "install ok installed",
    )
}

fn install_toolchain(report: Report, toolchain: &str, components: &[&str]) -> Result<()> {
    if which::which("rustup").is_err() {
        bail!("rustup not found: install rustup, then run `cargo xtask setup` again");
    }
    let installed = keepalive_lab::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed
        .lines()
        .any(|line| names_toolchain(line, toolchain))
    {
        println!(
            "installing toolchain {toolchain} with {}",
            components.join(", ")
        );
        return cmd::run(
            Command::new("rustup")
                .args(["toolchain", "install", toolchain, "--profile", "minimal"])
                .arg("--no-self-update")
                .arg("-c")
                .arg(components.join(",")),
        )
        .with_context(|| format!("cannot install toolchain {toolchain}"));
    }

    let listed = keepalive_lab::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|component| !listed.lines().any(|line| names_component(line, component)))
        .collect();
    if missing.is_empty() {
        report.present(&format!(
            "toolchain {toolchain} with {}",
            components.join(", ")
        ));
        return Ok(());
    }
    println!(
        "toolchain {toolchain} is installed; adding {}",
        missing.join(", ")
    );
    cmd::run(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", toolchain])
            .args(&missing),
    )
    .with_context(|| format!("cannot add components to toolchain {toolchain}"))
}

/// A line of `rustup toolchain list` names `toolchain` (`1.99.1-x86_64-unknown-linux-gnu (default)`).
fn names_toolchain(line: &str, toolchain: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    name == toolchain
        || name
            .strip_prefix(toolchain)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|triple| triple.chars().next().is_some_and(|c| !c.is_ascii_digit()))
}

/// A line of `rustup component list --installed` names `component` (`clippy-x86_64-unknown-linux-gnu`).
fn names_component(line: &str, component: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    name == component
        || name
            .strip_prefix(component)
            .is_some_and(|rest| rest.starts_with('-') && rest.matches('-').count() >= 2)
}

fn install_bpf_linker(report: Report) -> Result<()> {
    let linker = cmd::cargo_bin_dir()?.join("bpf-linker");
    let found = if linker.exists() {
        match keepalive_lab::output(Command::new(&linker).arg("--version")) {
            Ok(version)
                if version
                    .split_whitespace()
                    .any(|word| word == BPF_LINKER_VERSION) =>
            {
                report.present(&format!("{} ({})", version.trim(), linker.display()));
                return Ok(());
            }
            Ok(version) => Some(version.trim().to_owned()),
            Err(err) => Some(format!("a bpf-linker that does not run ({err:#})")),
        }
    } else {
        None
    };

    match &found {
        Some(version) => println!(
            "replacing {version} at {} with bpf-linker {BPF_LINKER_VERSION} (LLVM 22)",
            linker.display()
        ),
        None => {
            println!("installing bpf-linker {BPF_LINKER_VERSION} (LLVM 22, takes a minute or two)")
        }
    }
    let llvm_bin = Path::new(LLVM_PREFIX).join("bin");
    if !llvm_bin.join("llvm-config").exists() {
        bail!(
            "{} not found: bpf-linker is built against LLVM 22 (Debian packages llvm-22-dev \
             libpolly-22-dev libzstd-dev)",
            llvm_bin.join("llvm-config").display()
        );
    }
    let mut install = cmd::cargo(host_toolchain())?;
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("PATH", cmd::path_with(&[cmd::cargo_bin_dir()?, llvm_bin])?);
    if found.is_some() {
        install.arg("--force");
    }
    cmd::run(&mut install).context("cannot build bpf-linker")
}

fn warn(message: &str) {
    eprintln!("warning: {message}");
}

/// `6.18.44-fc-v669` → `(6, 18)`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(kernel_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.10"), Some((6, 10)));
        assert_eq!(kernel_version("6.12.0+"), Some((6, 12)));
        assert_eq!(kernel_version("linux"), None);
        assert!(kernel_version("6.9.1").unwrap() < RESET_REASON_KERNEL);
    }

    #[test]
    fn matches_toolchain_names() {
        let line = "1.99.1-x86_64-unknown-linux-gnu (active, default)";
        assert!(names_toolchain(line, "1.99.1"));
        assert!(!names_toolchain(line, "1.99"));
        assert!(names_toolchain(
            "nightly-2026-06-20-x86_64-unknown-linux-gnu /root/.rustup/toolchains/x",
            "nightly-2026-06-20"
        ));
        assert!(!names_toolchain(
            "nightly-2026-06-20-x86_64-unknown-linux-gnu",
            "nightly"
        ));
        assert!(names_toolchain("1.99.1", "1.99.1"));
    }

    #[test]
    fn matches_component_names() {
        assert!(names_component("rust-src", "rust-src"));
        assert!(names_component("clippy-x86_64-unknown-linux-gnu", "clippy"));
        assert!(!names_component(
            "rust-std-x86_64-unknown-linux-gnu",
            "rust-src"
        ));
        assert!(!names_component("rustfmt-preview", "rustfmt"));
        assert!(!names_component(
            "rustc-x86_64-unknown-linux-gnu",
            "rust-src"
        ));
    }
}
