//! GGUF reader (stub: being written).
use std::path::Path;

use super::Value;
use crate::error::Result;
use crate::quants::GgmlType;

/// One tensor's header entry, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (at most 63 bytes of UTF-8).
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the contiguous one. 1 to 4 entries.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Product of `dims`.
    pub n_elements: u64,
    /// Bytes of data (unpadded).
    pub n_bytes: u64,
}

/// A parsed, validated GGUF file whose tensor data stays in the map.
pub struct GgufFile {}

impl GgufFile {
    /// Map and parse a file.
    pub fn open(_path: impl AsRef<Path>) -> Result<GgufFile> {
        todo!()
    }
    /// Parse bytes already in memory.
    pub fn from_bytes(_bytes: Vec<u8>) -> Result<GgufFile> {
        todo!()
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        todo!()
    }
    /// One metadata value.
    pub fn get(&self, _key: &str) -> Option<&Value> {
        todo!()
    }
    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        todo!()
    }
    /// One tensor info by name.
    pub fn tensor(&self, _name: &str) -> Option<&TensorInfo> {
        todo!()
    }
    /// A tensor's bytes, zero-copy.
    pub fn tensor_data(&self, _t: &TensorInfo) -> &[u8] {
        todo!()
    }
}
