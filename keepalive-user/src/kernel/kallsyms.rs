//! Kernel symbol addresses from /proc/kallsyms.

use std::{fs, io, path::Path};

/// Where the kernel lists its symbols.
pub const KALLSYMS: &str = "/proc/kallsyms";

/// Errors looking up a symbol.
#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    /// The symbol list could not be read.
    #[error("cannot read {path}")]
    Unreadable {
        /// The file, normally [`KALLSYMS`].
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The symbol is not listed.
    #[error("symbol {0} is not in /proc/kallsyms")]
    Missing(String),
    /// The symbol is listed with address 0: kptr_restrict hides addresses from this process.
    #[error("/proc/kallsyms hides the address of {0} (kernel.kptr_restrict; run as root)")]
    Hidden(String),
}

/// The address of a kernel text symbol, from `kallsyms` (normally [`KALLSYMS`]).
pub fn symbol_address(kallsyms: &Path, name: &str) -> Result<u64, KallsymsError> {
    let text = fs::read_to_string(kallsyms).map_err(|source| KallsymsError::Unreadable {
        path: kallsyms.display().to_string(),
        source,
    })?;
    find_symbol(&text, name)
}

/// Looks `name` up in the text of /proc/kallsyms (`address type name [module]` lines).
pub fn find_symbol(kallsyms: &str, name: &str) -> Result<u64, KallsymsError> {
    let address = kallsyms
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?;
            let kind = fields.next()?;
            let symbol = fields.next()?;
            (symbol == name && kind.eq_ignore_ascii_case("t"))
                .then(|| u64::from_str_radix(address, 16).ok())
                .flatten()
        })
        .ok_or_else(|| KallsymsError::Missing(name.to_owned()))?;
    if address == 0 {
        return Err(KallsymsError::Hidden(name.to_owned()));
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_text_symbols_only() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81a2b3c0 t tcp_keepalive_timer\n\
                    ffffffff82000000 d tcp_keepalive_timer_data\n";
        assert_eq!(
            find_symbol(text, "tcp_keepalive_timer").unwrap(),
            0xffffffff81a2b3c0
        );
        assert!(matches!(
            find_symbol(text, "nope"),
            Err(KallsymsError::Missing(_))
        ));
        let hidden = "0000000000000000 t tcp_keepalive_timer\n";
        assert!(matches!(
            find_symbol(hidden, "tcp_keepalive_timer"),
            Err(KallsymsError::Hidden(_))
        ));
    }
}
