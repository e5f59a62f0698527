//! Where a test writes its artefacts (screenshots, driver logs).
//!
//! `$E2E_OUTPUT_DIR` (exported by `scripts/test.sh`) or, when unset,
//! `tests/output` in the workspace; each test gets its own sub-folder.
//! The folder is gitignored.

use std::path::PathBuf;

/// The root output folder.
pub fn root() -> PathBuf {
    match std::env::var_os("E2E_OUTPUT_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("output"),
    }
}

/// `<root>/<test>`, created (and emptied of earlier runs' files).
pub fn test_dir(test: &str) -> anyhow::Result<PathBuf> {
    let safe: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = root().join(safe);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot clean {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}
