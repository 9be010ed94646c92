//! File integrity: every shipped file is checked against `data/SHA256SUMS` each time it is read.

use crate::error::{LabError, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Reads `root/rel` and checks it against the SHA-256 listed for `rel` in `root/SHA256SUMS`.
///
/// Every read is checked, not only the first one of a process: a file changed while a notebook
/// runs is caught at its next load. It is cheap: hashing the shipped weights takes about 2 ms,
/// and the datasets are read once per process and kept in memory.
pub fn verified_bytes(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let path = root.join(rel);
    let bytes =
        std::fs::read(&path).map_err(|e| LabError::MissingFile { path: path.clone(), reason: e.to_string() })?;
    let expected = expected_hash(root, rel)?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(LabError::HashMismatch { path, expected, actual });
    }
    Ok(bytes)
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn expected_hash(root: &Path, rel: &str) -> Result<String> {
    let sums_path = root.join("SHA256SUMS");
    let sums = std::fs::read_to_string(&sums_path)
        .map_err(|e| LabError::MissingFile { path: sums_path.clone(), reason: e.to_string() })?;
    sums.lines()
        .filter_map(|line| line.split_once("  "))
        .find(|(_, name)| name.trim() == rel)
        .map(|(hash, _)| hash.trim().to_string())
        .ok_or_else(|| LabError::BadFile { path: sums_path, reason: format!("it lists no hash for `{rel}`") })
}
