//! GGUF writer (stub: being written).
use std::path::Path;

use crate::error::Result;

/// Builds a GGUF file.
pub struct GgufWriter {}

/// Write a file atomically through a temp file in the same directory.
pub fn write_atomic(
    _path: &Path,
    _f: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
) -> Result<()> {
    todo!()
}
