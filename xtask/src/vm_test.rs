//! `cargo xtask vm-test`: boots Debian's cloud kernels under qemu (software emulation) with an
//! initramfs holding the daemon and the guest test driver (keepalive-vmtest), which runs the
//! daemon once per hook choice and checks its events and findings for real resets. This is
//! where the fentry and kprobe variants are proven: this project's machines block both.

mod initramfs;
mod kernel;
mod modules;
mod qemu;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use self::initramfs::Initramfs;
use self::kernel::Apt;
use crate::build;
use crate::cmd;
use crate::setup;
use keepalive_lab::Tool;
use keepalive_lab::workspace::host_toolchain;

/// The guest's /init; `@HOOKS@` becomes the hook choices, `@RECORDINGS@` the driver's
/// `--print-recordings` when golden streams are kept.
const INIT: &str = include_str!("../assets/vm/init");
/// One boot runs the daemon once per hook choice; software emulation is slow, so this is
/// generous, but bounded.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// The oldest kernel series booted, and the Debian release that ships it.
const OLDEST: (&str, &str) = ("5.10", "bullseye");
/// Every hook choice the daemon offers.
pub const ALL_HOOKS: &str = "auto,tracepoint,fentry,kprobe";
/// How the guest driver prefixes each console line of a printed recording (then the hook
/// choice and the line).
const RECORDING_PREFIX: &str = "VMTEST-RECORDING ";

/// Which kernels to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kernels {
    /// Debian 11's kernel series, the oldest supported: no socket storage for tracing
    /// programs (contexts in the bounded map) and no `bpf_get_socket_cookie` for them.
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12's own kernel series.
    #[value(name = "6.1")]
    V6_1,
    /// The 6.12 series Debian 12 also ships (from backports where the sources lack it).
    #[value(name = "6.12")]
    V6_12,
    /// 6.1, 6.12 and 5.10.
    All,
}

impl Kernels {
    fn series(self) -> &'static [&'static str] {
        match self {
            Kernels::V5_10 => &["5.10"],
            Kernels::V6_1 => &["6.1"],
            Kernels::V6_12 => &["6.12"],
            Kernels::All => &["6.1", "6.12", "5.10"],
        }
    }
}

/// What one kernel's boot showed.
struct Outcome {
    series: &'static str,
    result: Result<Passed>,
}

struct Passed {
    release: String,
    boot_and_tests: Duration,
    hooks: Vec<String>,
}

pub fn run(kernels: Kernels, hooks: &str, golden: bool) -> Result<()> {
    let started = Instant::now();
    setup::run(setup::Report::Quiet)?;
    cmd::run(cmd::cargo(host_toolchain())?.args([
        "build",
        "--release",
        "-p",
        "keepalive-user",
        "-p",
        "keepalive-vmtest",
    ]))?;
    let release_dir = build::target_dir().join("release");
    let daemon = release_dir.join("keepalive-observer");
    let driver = release_dir.join("keepalive-vmtest");
    let work = build::target_dir().join("vm-test");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    println!(
        "vm-test: built in {:.0} s; working in {}",
        started.elapsed().as_secs_f64(),
        work.display()
    );

    let mut outcomes = Vec::new();
    for &series in kernels.series() {
        let result = boot_series(series, &work, &daemon, &driver, hooks, golden);
        if let Err(error) = &result {
            eprintln!("vm-test: kernel {series}: {error:#}");
        }
        outcomes.push(Outcome { series, result });
    }

    println!("vm-test summary (hooks: {hooks}):");
    let mut failed = Vec::new();
    for outcome in &outcomes {
        match &outcome.result {
            Ok(passed) => {
                println!(
                    "  {} ({}): PASS, boot and tests {:.0} s",
                    outcome.series,
                    passed.release,
                    passed.boot_and_tests.as_secs_f64()
                );
                for hook in &passed.hooks {
                    println!("    {hook}");
                }
            }
            Err(error) => {
                println!("  {}: FAIL: {error:#}", outcome.series);
                failed.push(outcome.series);
            }
        }
    }
    println!("vm-test took {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "vm-test: {} passed, {} failed",
        outcomes.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("vm-test failed on kernel {}", failed.join(", "));
    }
    Ok(())
}

/// Fetches the newest cloud kernel of `series`, builds the initramfs, boots it.
fn boot_series(
    series: &'static str,
    work: &Path,
    daemon: &Path,
    driver: &Path,
    hooks: &str,
    golden: bool,
) -> Result<Passed> {
    let host = Apt::host();
    let (apt, package) = match host.newest_cloud_kernel(series)? {
        Some(package) => (host, package),
        None if series == OLDEST.0 => {
            let codename = OLDEST.1;
            println!("vm-test: the {series} cloud kernel comes from Debian {codename}");
            let private = Apt::with_release(&work.join(format!("apt-{codename}")), codename)?;
            let package = private.newest_cloud_kernel(series)?.with_context(|| {
                format!("no linux-image-{series}.*-cloud-amd64 package in Debian {codename}")
            })?;
            (private, package)
        }
        None => {
            println!(
                "vm-test: this machine's apt sources have no {series} cloud kernel; trying \
                 backports in a private apt configuration"
            );
            let private = Apt::with_backports(&work.join("apt"))?;
            let package = private.newest_cloud_kernel(series)?.with_context(|| {
                format!("no linux-image-{series}.*-cloud-amd64 package found, backports included")
            })?;
            (private, package)
        }
    };
    println!("vm-test: kernel {series}: {package}");
    let deb = apt.download(&package, &work.join("debs"))?;
    let dir = work.join(series);
    let root = dir.join("root");
    let release = kernel::unpack(&deb, &root)?;
    let vmlinux = dir.join("vmlinux");
    kernel::vmlinux(&root, &release, &vmlinux)?;
    let initrd = dir.join("initramfs.cpio");
    let config = root.join("boot").join(format!("config-{release}"));
    let modules = modules::closure(&root, &release, modules::MIDDLEBOX)?;
    let image = initramfs(daemon, driver, &config, &release, &modules, hooks, golden)?;
    fs::write(&initrd, image).with_context(|| format!("writing {}", initrd.display()))?;
    let console = qemu::boot(&vmlinux, &initrd, series, BOOT_TIMEOUT)?;
    if golden {
        keep_golden(series, &console.lines, daemon)?;
    }
    if !console.passed {
        bail!("the guest test failed on kernel {series} (see the [{series}] lines above)");
    }
    Ok(Passed {
        release,
        boot_and_tests: console.elapsed,
        hooks: console
            .lines
            .iter()
            .filter(|l| l.starts_with("vmtest[") && l.contains("] hook "))
            .cloned()
            .collect(),
    })
}

/// busybox, /init, the daemon and the driver with their shared libraries, the kernel's
/// configuration (the daemon reads HZ from it), /dev/console, and for the middlebox `ip`,
/// `nft` and the kernel modules, which /init loads in the order `lib/modules/load` lists.
fn initramfs(
    daemon: &Path,
    driver: &Path,
    config: &Path,
    release: &str,
    modules: &[modules::Module],
    hooks: &str,
    golden: bool,
) -> Result<Vec<u8>> {
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: install busybox-static (`cargo xtask setup`)");
    }
    let mut image = Initramfs::default();
    image.copy(&busybox, "bin/busybox")?;
    let recordings = if golden { "--print-recordings" } else { "" };
    let init = INIT
        .replace("@HOOKS@", hooks)
        .replace("@RECORDINGS@", recordings);
    image.file("init", 0o755, init.as_bytes());
    image.program_with_libraries(daemon, "keepalive-observer")?;
    image.program_with_libraries(driver, "keepalive-vmtest")?;
    image.copy(config, &format!("boot/config-{release}"))?;
    for tool in [Tool::Ip, Tool::Nft] {
        let path = tool.locate().with_context(|| {
            format!(
                "{} is missing: install {} (`cargo xtask setup`)",
                tool.program(),
                tool.package()
            )
        })?;
        image.program_with_libraries(&path, &format!("usr/sbin/{}", tool.program()))?;
    }
    let mut load = String::new();
    for module in modules {
        image.file(
            &format!("lib/modules/{}.ko", module.name),
            0o644,
            &module.object,
        );
        load.push_str(&module.name);
        load.push('\n');
    }
    image.file("lib/modules/load", 0o644, load.as_bytes());
    image.char_device("dev/console", 5, 1);
    Ok(image.finish())
}

/// Writes each hook choice's recording from the console to
/// `keepalive-schema/golden/vm-<series>-<choice>.recording.jsonl`, and the findings the host's
/// daemon replays from it beside it: the streams each kernel really emits, for the replay
/// tests.
fn keep_golden(series: &str, lines: &[String], daemon: &Path) -> Result<()> {
    let golden = keepalive_lab::workspace::root().join("keepalive-schema/golden");
    let mut recordings: std::collections::BTreeMap<&str, String> = Default::default();
    for line in lines {
        let Some((choice, record)) = line
            .split_once(RECORDING_PREFIX)
            .and_then(|(_, rest)| rest.split_once(' '))
        else {
            continue;
        };
        let text = recordings.entry(choice).or_default();
        text.push_str(record);
        text.push('\n');
    }
    if recordings.is_empty() {
        bail!("kernel {series}: the guest printed no recordings");
    }
    for (choice, text) in recordings {
        let stem = format!("vm-{series}-{choice}");
        let recording = golden.join(format!("{stem}.recording.jsonl"));
        fs::write(&recording, text).with_context(|| format!("writing {}", recording.display()))?;
        let replay = std::process::Command::new(daemon)
            .args(["replay", "--format", "json"])
            .arg(&recording)
            .output()
            .with_context(|| format!("replaying {}", recording.display()))?;
        if !replay.status.success() {
            bail!(
                "replaying {}: {}",
                recording.display(),
                String::from_utf8_lossy(&replay.stderr)
            );
        }
        let findings: String = String::from_utf8(replay.stdout)
            .context("the replay's output is not UTF-8")?
            .lines()
            .filter(|line| line.contains(r#""type":"finding""#))
            .map(|line| format!("{line}\n"))
            .collect();
        let path = golden.join(format!("{stem}.findings.jsonl"));
        fs::write(&path, findings).with_context(|| format!("writing {}", path.display()))?;
        println!("vm-test: kept {} and its findings", recording.display());
    }
    Ok(())
}
