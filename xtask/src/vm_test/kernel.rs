//! Debian's cloud kernels: the newest package of a series found through apt, downloaded,
//! unpacked with `dpkg -x`, and its compressed `vmlinuz` turned into the ELF `vmlinux` that
//! qemu boots directly (PVH).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Where apt finds packages: the machine's own sources, or a private configuration that adds
/// the backports suite without touching the machine's.
pub struct Apt {
    options: Vec<String>,
    what: String,
}

impl Apt {
    /// The machine's apt configuration.
    pub fn host() -> Apt {
        Apt {
            options: Vec::new(),
            what: "this machine's apt sources".to_owned(),
        }
    }

    /// A private apt configuration under `dir` with the machine's Debian mirror for
    /// `<codename>` and `<codename>-backports`; its package lists are fetched here.
    pub fn with_backports(dir: &Path) -> Result<Apt> {
        let codename = os_codename()?;
        let suites = [codename.clone(), format!("{codename}-backports")];
        Apt::private(dir, &codename, &suites)
    }

    /// A private apt configuration under `dir` with the machine's Debian mirror for another
    /// release, `codename` (`bullseye` for Debian 11's 5.10).
    pub fn with_release(dir: &Path, codename: &str) -> Result<Apt> {
        Apt::private(dir, &os_codename()?, &[codename.to_owned()])
    }

    /// A private apt configuration under `dir` with `suites` from the mirror the machine
    /// uses for its own release, `host`.
    fn private(dir: &Path, host: &str, suites: &[String]) -> Result<Apt> {
        let (uri, keyring) = debian_mirror(host)?;
        let lists = dir.join("lists");
        let archives = dir.join("cache").join("archives");
        let parts = dir.join("sources.list.d");
        for d in [&lists.join("partial"), &archives.join("partial"), &parts] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let signed = keyring.map_or_else(String::new, |k| format!(" [signed-by={k}]"));
        let sources = dir.join("sources.list");
        let lines: String = suites
            .iter()
            .map(|suite| format!("deb{signed} {uri} {suite} main\n"))
            .collect();
        fs::write(&sources, lines).with_context(|| format!("writing {}", sources.display()))?;
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            format!("Dir::Etc::SourceParts={}", parts.display()),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "Debug::NoLocking=1".to_owned(),
        ];
        let apt = Apt {
            options: options
                .into_iter()
                .flat_map(|o| ["-o".to_owned(), o])
                .collect(),
            what: format!(
                "{} (private apt configuration in {})",
                suites.join(", "),
                dir.display()
            ),
        };
        cmd::run(apt.command("apt-get").arg("update").arg("-q"))
            .context("fetching the package lists for the private apt configuration")?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.args(&self.options);
        command
    }

    /// The newest installable `linux-image-<series>.*-cloud-amd64` package, e.g.
    /// `linux-image-6.1.0-56-cloud-amd64` for series `6.1`.
    pub fn newest_cloud_kernel(&self, series: &str) -> Result<Option<String>> {
        let prefix = format!("linux-image-{series}.");
        let names = keepalive_lab::output(self.command("apt-cache").arg("pkgnames").arg(&prefix))?;
        let mut candidates: Vec<&str> = names
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&prefix) && n.ends_with("-cloud-amd64"))
            .collect();
        candidates.sort_by_key(|name| std::cmp::Reverse(version_key(name)));
        for name in candidates {
            let policy = keepalive_lab::output(self.command("apt-cache").args(["policy", name]))?;
            if installable(&policy) {
                return Ok(Some(name.to_owned()));
            }
        }
        Ok(None)
    }

    /// Downloads `package` into `dir` and returns the .deb's path.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let deb = |dir: &Path| -> Result<Option<PathBuf>> {
            let prefix = format!("{package}_");
            for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
                let path = entry?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with(&prefix) && name.ends_with(".deb") {
                    return Ok(Some(path));
                }
            }
            Ok(None)
        };
        if let Some(found) = deb(dir)? {
            println!("vm-test: using the downloaded {}", found.display());
            return Ok(found);
        }
        cmd::run(
            self.command("apt-get")
                .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
                .current_dir(dir),
        )
        .with_context(|| format!("downloading {package} from {}", self.what))?;
        deb(dir)?.with_context(|| format!("apt-get download left no {package}_*.deb"))
    }
}

/// Whether `apt-cache policy` shows a candidate version.
fn installable(policy: &str) -> bool {
    policy.lines().any(|line| {
        line.trim()
            .strip_prefix("Candidate:")
            .is_some_and(|v| v.trim() != "(none)" && !v.trim().is_empty())
    })
}

/// The numbers in a package name, in order: `6.12.117+deb12` → [6, 12, 117, 12].
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// `VERSION_CODENAME` from /etc/os-release.
fn os_codename() -> Result<String> {
    let release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: not a Debian release?")
}

/// The URI (and keyring) of the machine's apt source for suite `codename`, from
/// /etc/apt/sources.list and the deb822 files in /etc/apt/sources.list.d.
fn debian_mirror(codename: &str) -> Result<(String, Option<String>)> {
    let mut texts = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == "sources" || e == "list")
                && let Ok(text) = fs::read_to_string(&path)
            {
                texts.push(text);
            }
        }
    }
    texts
        .iter()
        .find_map(|text| mirror_in(text, codename))
        .with_context(|| format!("no apt source for suite {codename} in /etc/apt"))
}

/// The first source in `text` (one-line or deb822 format) that serves `codename`.
fn mirror_in(text: &str, codename: &str) -> Option<(String, Option<String>)> {
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"deb") {
            continue;
        }
        let mut rest = &words[1..];
        let mut keyring = None;
        // Options in brackets, possibly over several words: `[arch=amd64 signed-by=/k.gpg]`.
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']'))?;
            keyring = rest[..=end]
                .iter()
                .find_map(|o| o.trim_matches(['[', ']']).strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = &rest[end + 1..];
        }
        if rest.len() >= 2 && rest[1] == codename {
            return Some((rest[0].to_owned(), keyring));
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let serves = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == codename));
        let types = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if serves && types {
            let uri = field("URIs")?.split_whitespace().next()?.to_owned();
            return Some((uri, field("Signed-By").map(str::to_owned)));
        }
    }
    None
}

/// Unpacks a kernel package into `dir` and returns the release it installs
/// (`boot/vmlinuz-<release>`).
pub fn unpack(deb: &Path, dir: &Path) -> Result<String> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(dir))?;
    let boot = dir.join("boot");
    for entry in fs::read_dir(&boot).with_context(|| format!("listing {}", boot.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            return Ok(release.to_owned());
        }
    }
    bail!("{} has no boot/vmlinuz-*", deb.display())
}

/// How the kernel image is compressed, from the kernel's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Lz4,
    Zstd,
    Gzip,
    Xz,
}

impl Compression {
    fn from_config(config: &str) -> Option<Compression> {
        [
            ("CONFIG_KERNEL_LZ4=y", Compression::Lz4),
            ("CONFIG_KERNEL_ZSTD=y", Compression::Zstd),
            ("CONFIG_KERNEL_GZIP=y", Compression::Gzip),
            ("CONFIG_KERNEL_XZ=y", Compression::Xz),
        ]
        .into_iter()
        .find_map(|(line, c)| config.lines().any(|l| l.trim() == line).then_some(c))
    }

    fn magic(self) -> &'static [u8] {
        match self {
            Compression::Lz4 => &[0x02, 0x21, 0x4c, 0x18],
            Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
            Compression::Gzip => &[0x1f, 0x8b],
            Compression::Xz => &[0xfd, b'7', b'z', b'X', b'Z'],
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
        }
    }
}

/// The compressed kernel inside a bzImage, as its x86 boot header locates it: the payload
/// follows the `setup_sects + 1` sectors of real-mode setup at `payload_offset`, and its last
/// four bytes are the uncompressed size, not part of the compressed stream.
fn payload(bzimage: &[u8]) -> Result<&[u8]> {
    let u32_at = |at: usize| -> Option<u32> {
        bzimage
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage: no HdrS boot header signature");
    }
    let version = bzimage
        .get(0x206..0x208)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    if version < 0x208 {
        bail!("boot protocol {version:#x} has no payload fields (needs 2.08 or later)");
    }
    let setup_sects = match bzimage.get(0x1f1) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    let (offset, length) = (u32_at(0x248), u32_at(0x24c));
    let (Some(offset), Some(length)) = (offset, length) else {
        bail!("truncated boot header");
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(offset)?;
    let end = start + usize::try_from(length)?;
    bzimage
        .get(start..end.saturating_sub(4))
        .filter(|p| !p.is_empty())
        .context("the boot header's payload lies outside the file")
}

/// Decompresses `boot/vmlinuz-<release>` under `root` into `vmlinux`, with the method its
/// `boot/config-<release>` names, checking the payload's magic and the ELF result.
pub fn vmlinux(root: &Path, release: &str, out: &Path) -> Result<()> {
    let config_path = root.join("boot").join(format!("config-{release}"));
    let config = fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let compression = Compression::from_config(&config).with_context(|| {
        format!(
            "{} names no kernel compression this tool decompresses (LZ4, ZSTD, GZIP, XZ)",
            config_path.display()
        )
    })?;
    let vmlinuz_path = root.join("boot").join(format!("vmlinuz-{release}"));
    let image =
        fs::read(&vmlinuz_path).with_context(|| format!("reading {}", vmlinuz_path.display()))?;
    let payload = payload(&image).with_context(|| format!("{}", vmlinuz_path.display()))?;
    if !payload.starts_with(compression.magic()) {
        bail!(
            "{}: the payload does not start with the {compression:?} magic the configuration \
             announces",
            vmlinuz_path.display()
        );
    }
    let tool = compression.tool();
    let output = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut child = Command::new(tool)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(output)
        .spawn()
        .with_context(|| format!("cannot start {tool} (run `cargo xtask setup`)"))?;
    let mut stdin = child.stdin.take().context("stdin is piped")?;
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let status = child
        .wait()
        .with_context(|| format!("waiting for {tool}"))?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the thread feeding {tool} panicked"))?
        .with_context(|| format!("feeding {tool}"))?;
    if !status.success() {
        bail!("{tool} -dc failed ({status}) on {}", vmlinuz_path.display());
    }
    let head = fs::read(out).with_context(|| format!("reading {}", out.display()))?;
    if !head.starts_with(b"\x7fELF") {
        bail!(
            "{} did not decompress to an ELF vmlinux",
            vmlinuz_path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_package_by_the_numbers_in_its_name() {
        let mut names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-48-cloud-amd64",
        ];
        names.sort_by_key(|n| std::cmp::Reverse(version_key(n)));
        assert_eq!(names[0], "linux-image-6.1.0-56-cloud-amd64");
        assert!(
            version_key("linux-image-6.12.117+deb12-cloud-amd64")
                > version_key("linux-image-6.12.99+deb12-cloud-amd64")
        );
    }

    #[test]
    fn policy_candidates() {
        assert!(installable(
            "x:\n  Installed: (none)\n  Candidate: 6.1.192-2\n"
        ));
        assert!(!installable(
            "x:\n  Installed: (none)\n  Candidate: (none)\n"
        ));
        assert!(!installable(""));
    }

    #[test]
    fn mirrors_from_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm \
                      bookworm-updates\nComponents: main\nSigned-By: /usr/share/k.gpg\n\n\
                      Types: deb\nURIs: http://mirror.invalid/debian-security\n\
                      Suites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822, "bookworm"),
            Some((
                "http://mirror.invalid/debian".to_owned(),
                Some("/usr/share/k.gpg".to_owned())
            ))
        );
        let one_line = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/d \
                        bookworm main\n";
        assert_eq!(
            mirror_in(one_line, "bookworm"),
            Some(("http://m.invalid/d".to_owned(), Some("/k.gpg".to_owned())))
        );
        assert_eq!(mirror_in(one_line, "trixie"), None);
    }

    #[test]
    fn compression_from_the_configuration() {
        let config = "# CONFIG_KERNEL_GZIP is not set\nCONFIG_KERNEL_ZSTD=y\n";
        assert_eq!(Compression::from_config(config), Some(Compression::Zstd));
        assert_eq!(Compression::from_config("CONFIG_HZ=250\n"), None);
    }

    #[test]
    fn payload_is_found_through_the_boot_header() {
        let mut image = vec![0u8; 4096];
        image[0x1f1] = 1;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        image[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        image[1024 + 100..1024 + 108].copy_from_slice(b"ZSTDsize");
        assert_eq!(payload(&image).unwrap(), b"ZSTD");
        assert!(payload(&[0u8; 16]).is_err());
        image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload(&image).is_err());
    }
}
