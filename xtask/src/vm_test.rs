//! `cargo xtask vm-test`: boots Debian's cloud kernels under qemu (software emulation) with an
//! initramfs holding the daemon and the guest test driver (keepalive-vmtest), which runs the
//! daemon once per hook choice and checks its events and findings for real resets. This is
//! where the fentry and kprobe variants are proven: this project's machines block both.

mod initramfs;
mod kernel;
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
use keepalive_lab::workspace::host_toolchain;

/// The guest's /init; `@HOOKS@` becomes the hook choices.
const INIT: &str = include_str!("../assets/vm/init");
/// One boot runs the daemon once per hook choice; software emulation is slow, so this is
/// generous, but bounded.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// Every hook choice the daemon offers.
pub const ALL_HOOKS: &str = "auto,tracepoint,fentry,kprobe";

/// Which kernels to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kernels {
    /// Debian 12's own kernel series.
    #[value(name = "6.1")]
    V6_1,
    /// The 6.12 series Debian 12 also ships (from backports where the sources lack it).
    #[value(name = "6.12")]
    V6_12,
    /// Both.
    All,
}

impl Kernels {
    fn series(self) -> &'static [&'static str] {
        match self {
            Kernels::V6_1 => &["6.1"],
            Kernels::V6_12 => &["6.12"],
            Kernels::All => &["6.1", "6.12"],
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

pub fn run(kernels: Kernels, hooks: &str) -> Result<()> {
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
        let result = boot_series(series, &work, &daemon, &driver, hooks);
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
) -> Result<Passed> {
    let host = Apt::host();
    let (apt, package) = match host.newest_cloud_kernel(series)? {
        Some(package) => (host, package),
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
    let image = initramfs(daemon, driver, &config, &release, hooks)?;
    fs::write(&initrd, image).with_context(|| format!("writing {}", initrd.display()))?;
    let console = qemu::boot(&vmlinux, &initrd, series, BOOT_TIMEOUT)?;
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
/// configuration (the daemon reads HZ from it) and /dev/console.
fn initramfs(
    daemon: &Path,
    driver: &Path,
    config: &Path,
    release: &str,
    hooks: &str,
) -> Result<Vec<u8>> {
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: install busybox-static (`cargo xtask setup`)");
    }
    let mut image = Initramfs::default();
    image.copy(&busybox, "bin/busybox")?;
    image.file("init", 0o755, INIT.replace("@HOOKS@", hooks).as_bytes());
    image.program_with_libraries(daemon, "keepalive-observer")?;
    image.program_with_libraries(driver, "keepalive-vmtest")?;
    image.copy(config, &format!("boot/config-{release}"))?;
    image.char_device("dev/console", 5, 1);
    Ok(image.finish())
}
