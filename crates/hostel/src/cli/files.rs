//! Files on the client's machine that commands read or name.

use anyhow::{Context, Result};
use std::path::Path;

/// The first line of a file (a password, a key): the rest is ignored.
pub fn first_line(f: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(f)
        .with_context(|| format!("reading {}", f.display()))?
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// A path made absolute against the current directory (the daemon has another one).
pub fn absolute(p: &Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(abs.display().to_string())
}
