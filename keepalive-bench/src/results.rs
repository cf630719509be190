//! The results file: the generated block between markers, the hand-written text around it kept.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

const BEGIN: &str =
    "<!-- bench:begin (written by `cargo xtask bench`; edit outside the markers) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the generated part of the results file, keeping what is written around it.
pub fn write(path: &Path, generated: &str) -> Result<()> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let text = splice(existing.as_deref(), generated)?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn splice(existing: Option<&str>, generated: &str) -> Result<String> {
    let block = format!("{BEGIN}\n{generated}{END}\n");
    let Some(existing) = existing else {
        return Ok(format!("# Benchmarks\n\n{block}"));
    };
    let (Some(start), Some(end)) = (existing.find(BEGIN), existing.find(END)) else {
        bail!(
            "the results file has no bench markers; add `{BEGIN}` and `{END}` where the figures go"
        );
    };
    if end < start {
        bail!("the results file's bench markers are out of order");
    }
    let after = &existing[end + END.len()..];
    let after = after.strip_prefix('\n').unwrap_or(after);
    Ok(format!("{}{block}{after}", &existing[..start]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_the_generated_block() {
        let fresh = splice(None, "figures\n").unwrap();
        assert!(fresh.starts_with("# Benchmarks\n"));
        assert!(fresh.contains("figures\n<!-- bench:end -->"));
        let edited = fresh.replace("# Benchmarks\n", "# Benchmarks\n\nintro\n") + "\nanalysis\n";
        let again = splice(Some(&edited), "new\n").unwrap();
        assert!(again.contains("intro\n"));
        assert!(again.ends_with("new\n<!-- bench:end -->\n\nanalysis\n"));
        assert_eq!(splice(Some(&again), "new\n").unwrap(), again);
        assert!(!again.contains("figures"));
        assert!(splice(Some("no markers"), "x").is_err());
    }
}
