//! GGUF: the container tern reads models from and the quantizer writes.
//!
//! `read.rs` parses and validates a file in one pass over a memory map (or a
//! byte buffer) and hands out zero-copy tensor views; `write.rs` serialises
//! metadata and tensors in the layout the `gguf` Python package writes.
//! This module owns the value model shared by both.
//!
//! Invariant: parsing never allocates more than the file could hold; every
//! count, length, dimension, type id, alignment and offset is checked against
//! the file before it is used (`../shared/research/reliability.md` §6.1).

mod read;
mod write;

pub use read::{
    GgufFile, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_ARRAY_LEN, MAX_DIMS,
    MAX_KEY_LEN, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};
pub use write::{write_atomic, GgufWriter, GGUF_WRITE_VERSION};

/// GGUF's value type ids, as stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    /// An unsigned 8-bit integer (type id 0).
    U8 = 0,
    /// A signed 8-bit integer (type id 1).
    I8 = 1,
    /// An unsigned 16-bit integer (type id 2).
    U16 = 2,
    /// A signed 16-bit integer (type id 3).
    I16 = 3,
    /// An unsigned 32-bit integer (type id 4).
    U32 = 4,
    /// A signed 32-bit integer (type id 5).
    I32 = 5,
    /// A 32-bit float (type id 6).
    F32 = 6,
    /// A bool, stored as one byte that must be 0 or 1 (type id 7).
    Bool = 7,
    /// A UTF-8 string with a u64 byte length (type id 8).
    String = 8,
    /// An array: element type id, u64 count, then the elements (type id 9).
    Array = 9,
    /// An unsigned 64-bit integer (type id 10).
    U64 = 10,
    /// A signed 64-bit integer (type id 11).
    I64 = 11,
    /// A 64-bit float (type id 12).
    F64 = 12,
}

impl ValueType {
    /// The type with this id, if GGUF defines one.
    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Lower-case name for messages ("u32", "string").
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value. Arrays are homogeneous and never nested.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A `u8` value (type id 0).
    U8(u8),
    /// An `i8` value (type id 1).
    I8(i8),
    /// A `u16` value (type id 2).
    U16(u16),
    /// An `i16` value (type id 3).
    I16(i16),
    /// A `u32` value (type id 4).
    U32(u32),
    /// An `i32` value (type id 5).
    I32(i32),
    /// An `f32` value (type id 6).
    F32(f32),
    /// A bool (type id 7).
    Bool(bool),
    /// A UTF-8 string (type id 8).
    String(String),
    /// A `u64` value (type id 10).
    U64(u64),
    /// An `i64` value (type id 11).
    I64(i64),
    /// An `f64` value (type id 12).
    F64(f64),
    /// An array of one element type (type id 9).
    Array(Array),
}

/// A homogeneous metadata array.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// An array of `u8` values (element type id 0).
    U8(Vec<u8>),
    /// An array of `i8` values (element type id 1).
    I8(Vec<i8>),
    /// An array of `u16` values (element type id 2).
    U16(Vec<u16>),
    /// An array of `i16` values (element type id 3).
    I16(Vec<i16>),
    /// An array of `u32` values (element type id 4).
    U32(Vec<u32>),
    /// An array of `i32` values (element type id 5).
    I32(Vec<i32>),
    /// An array of `f32` values (element type id 6).
    F32(Vec<f32>),
    /// An array of bools (element type id 7).
    Bool(Vec<bool>),
    /// An array of strings (element type id 8).
    String(Vec<String>),
    /// An array of `u64` values (element type id 10).
    U64(Vec<u64>),
    /// An array of `i64` values (element type id 11).
    I64(Vec<i64>),
    /// An array of `f64` values (element type id 12).
    F64(Vec<f64>),
}

impl Value {
    /// The value's GGUF type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// Any integer type as u64, if it is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as i64, if it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v as i64),
            Value::U16(v) => Some(v as i64),
            Value::U32(v) => Some(v as i64),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any float or integer type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl Array {
    /// The element type.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
