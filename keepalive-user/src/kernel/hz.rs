//! The kernel's `HZ`, needed to turn jiffies (tcp timestamps, keepalive settings) into time.
//! It is a build option, so it is read from the kernel's configuration, never assumed.

use std::{fs, io::Read, path::Path};

/// Errors finding `HZ`.
#[derive(Debug, thiserror::Error)]
pub enum HzError {
    /// No readable kernel configuration states `CONFIG_HZ`.
    #[error(
        "cannot find CONFIG_HZ: looked in {looked}; enable CONFIG_IKCONFIG_PROC or install the \
         kernel's config in /boot, or pass --hz"
    )]
    NotFound {
        /// The files that were tried.
        looked: String,
    },
}

/// Finds `CONFIG_HZ` in /proc/config.gz or /boot/config-<release>.
pub fn kernel_hz() -> Result<u32, HzError> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let boot_config = format!("/boot/config-{}", release.trim());
    let mut looked = Vec::new();
    for path in ["/proc/config.gz", boot_config.as_str()] {
        looked.push(path.to_owned());
        if let Some(hz) = read_config(Path::new(path))
            .as_deref()
            .and_then(parse_config_hz)
        {
            return Ok(hz);
        }
    }
    Err(HzError::NotFound {
        looked: looked.join(", "),
    })
}

fn read_config(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    } else {
        String::from_utf8(bytes).ok()
    }
}

/// The value of the `CONFIG_HZ=` line of a kernel configuration.
pub fn parse_config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_HZ="))
        .and_then(|value| value.trim().parse().ok())
        .filter(|&hz| hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hz_line_only() {
        let config =
            "CONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\nCONFIG_HZ_PERIODIC=n\n";
        assert_eq!(parse_config_hz(config), Some(250));
        assert_eq!(parse_config_hz("CONFIG_HZ_250=y\n"), None);
        assert_eq!(parse_config_hz("CONFIG_HZ=0\n"), None);
        assert_eq!(parse_config_hz("CONFIG_HZ=abc\n"), None);
    }

    #[test]
    fn this_kernel_states_its_hz() {
        match kernel_hz() {
            Ok(hz) => assert!([100, 250, 300, 1000].contains(&hz), "odd HZ {hz}"),
            Err(err) => eprintln!("skipped: {err}"),
        }
    }
}
