//! The guest's initramfs, written directly as a `newc` cpio archive: no cpio tool, and the
//! `/dev/console` device node needs no root to create.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// An initramfs being assembled in memory.
#[derive(Default)]
pub struct Initramfs {
    archive: Vec<u8>,
    dirs: BTreeSet<String>,
    inode: u32,
}

impl Initramfs {
    /// A directory and its parents.
    pub fn dir(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                let name = prefix.clone();
                self.write_entry(&name, S_IFDIR | 0o755, (0, 0), &[]);
            }
        }
    }

    /// A regular file with `mode` permission bits, its parent directories included.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        if let Some((parent, _)) = path.trim_start_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
        self.write_entry(path.trim_start_matches('/'), S_IFREG | mode, (0, 0), data);
    }

    /// A copy of a file of this machine (symlinks followed) at `path` in the image.
    pub fn copy(&mut self, from: &Path, path: &str) -> Result<()> {
        let data = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.file(path, 0o755, &data);
        Ok(())
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        if let Some((parent, _)) = path.trim_start_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
        self.write_entry(
            path.trim_start_matches('/'),
            S_IFCHR | 0o600,
            (major, minor),
            &[],
        );
    }

    /// A dynamically linked program and the shared libraries `ldd` names for it, at the
    /// same paths as on this machine.
    pub fn program_with_libraries(&mut self, program: &Path, path: &str) -> Result<()> {
        self.copy(program, path)?;
        let listing = keepalive_lab::output(Command::new("ldd").arg(program))
            .with_context(|| format!("listing the libraries of {}", program.display()))?;
        for library in libraries(&listing) {
            let name = library.to_string_lossy().into_owned();
            self.copy(&library, &name)?;
        }
        Ok(())
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.write_entry("TRAILER!!!", 0, (0, 0), &[]);
        self.archive
    }

    /// One `newc` record: the header's thirteen 8-digit hex fields, the NUL-terminated name
    /// and the data, each padded to 4 bytes.
    fn write_entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let name_size = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        let fields = [
            self.inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.archive.extend_from_slice(header.as_bytes());
        self.archive.extend_from_slice(name.as_bytes());
        self.archive.push(0);
        self.pad();
        self.archive.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.archive.len().is_multiple_of(4) {
            self.archive.push(0);
        }
    }
}

/// Absolute library paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x…)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`); the vDSO has no file.
fn libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, target)) => target.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_paths() {
        let ldd = "\tlinux-vdso.so.1 (0x00007fe7a3721000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fe7)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007fe7a3723000)\n";
        assert_eq!(
            libraries(ldd),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn archive_entries_are_aligned_newc_records() {
        let mut image = Initramfs::default();
        image.file("bin/x", 0o755, b"abc");
        image.char_device("dev/console", 5, 1);
        let archive = image.finish();
        assert!(archive.starts_with(b"070701"));
        assert_eq!(archive.len() % 4, 0);
        // Directories come first, each once: "bin", then the file, then "dev", the device.
        let text = String::from_utf8_lossy(&archive);
        assert_eq!(text.matches("070701").count(), 5);
        assert!(text.contains("bin/x\0"));
        // The device's major and minor are the 10th and 11th fields.
        let console = text.find("dev/console").unwrap();
        let header = &text[console - 110..console];
        assert_eq!(&header[6 + 9 * 8..6 + 11 * 8], "0000000500000001");
        assert!(text.contains("TRAILER!!!\0"));
    }
}
