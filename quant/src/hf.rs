//! Hugging Face GPTQ export: a [`QuantizedMatrix`] as the `qweight`,
//! `qzeros`, `scales` and `g_idx` tensors of AutoGPTQ's checkpoint format
//! (what transformers, vLLM's `gptq`/`gptq_marlin` and optimum load), and a
//! minimal safetensors writer for them.
//!
//! # Format
//! For a linear layer of `in` inputs (our `cols`) and `out` outputs (`rows`),
//! groups of `g` inputs and `b`-bit codes:
//! - `qweight`: i32 `[in·b/32, out]`. Along each output column the codes of
//!   inputs 0, 1, 2, … form one LSB-first bit stream cut into 32-bit words
//!   (for 2, 4, 8 bits: `32/b` codes per word; for 3 bits a code may
//!   straddle two words, which is AutoGPTQ's 3-bit packing).
//! - `qzeros`: i32 `[in/g, out·b/32]`, the zero points of each group packed
//!   the same way along the outputs, stored **minus one** (AutoGPTQ's "v1"
//!   checkpoint quirk; loaders add the one back).
//! - `scales`: f16 `[in/g, out]`.
//! - `g_idx`: i32 `[in]`, `g_idx[i] = i / g` (groups are static, in natural
//!   order, so act-order needs no permutation here: `desc_act = false`).
//!
//! Decoding is `w = scale · (q − zero)`. That is exactly tern's decoding for
//! the grids whose zero point is an integer — Q4_0 (zero 8), Q8_0 (codes
//! shifted by 128, zero 128) and symmetric tern grids (zero 2^(b−1)). Q4_1
//! and asymmetric tern grids store an f16 minimum, not an integer zero, and
//! are refused rather than silently re-rounded.

use std::io::{self, Write};

use half::f16;

use crate::{Grid, QuantError, QuantizedMatrix};

/// One layer's GPTQ tensors, row-major with the shapes in the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct HfGptq {
    /// Bits per code.
    pub bits: u8,
    /// Inputs per group.
    pub group_size: usize,
    /// Packed codes, `[in·bits/32, out]`.
    pub qweight: Vec<i32>,
    /// Packed zero points minus one, `[in/group, out·bits/32]`.
    pub qzeros: Vec<i32>,
    /// Scales, `[in/group, out]`.
    pub scales: Vec<f16>,
    /// Group of each input, `[in]`.
    pub g_idx: Vec<i32>,
    /// Inputs (`in`).
    pub in_features: usize,
    /// Outputs (`out`).
    pub out_features: usize,
}

impl HfGptq {
    /// `(name suffix, dtype, shape, little-endian bytes)` of the four tensors.
    pub fn tensors(&self) -> [(&'static str, &'static str, Vec<usize>, Vec<u8>); 4] {
        let words = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (i, o, b, g) = (
            self.in_features,
            self.out_features,
            self.bits as usize,
            self.group_size,
        );
        [
            ("qweight", "I32", vec![i * b / 32, o], words(&self.qweight)),
            (
                "qzeros",
                "I32",
                vec![i / g, o * b / 32],
                words(&self.qzeros),
            ),
            (
                "scales",
                "F16",
                vec![i / g, o],
                self.scales.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("g_idx", "I32", vec![i], words(&self.g_idx)),
        ]
    }

    /// The `quantization_config` object for the model's `config.json`.
    pub fn quantization_config(&self) -> String {
        format!(
            "{{\"quant_method\": \"gptq\", \"bits\": {}, \"group_size\": {}, \
             \"desc_act\": false, \"sym\": true, \"static_groups\": true, \
             \"checkpoint_format\": \"gptq\"}}",
            self.bits, self.group_size
        )
    }
}

/// The integer zero point of `grid` and the shift from tern's stored code to
/// GPTQ's unsigned code, or an error for grids without one.
fn zero_point(grid: Grid) -> Result<(u32, u8), QuantError> {
    match grid {
        Grid::Q4_0 => Ok((8, 0)),
        Grid::Q8_0 => Ok((128, 128)),
        Grid::Tern {
            bits, sym: true, ..
        } => Ok((1 << (bits - 1), 0)),
        Grid::Q4_1 | Grid::Tern { sym: false, .. } => Err(QuantError::BadGrid(format!(
            "{grid:?} stores an f16 minimum, not an integer zero point; Hugging Face GPTQ \
             export needs a symmetric grid (Q4_0, Q8_0 or a symmetric tern grid)"
        ))),
    }
}

/// Packs `values` (each `< 2^bits`) as one LSB-first bit stream into 32-bit
/// words; `values.len()·bits` must be a multiple of 32.
fn pack_stream(values: impl Iterator<Item = u32>, bits: u8, out: &mut Vec<i32>) {
    let mut acc = 0u64;
    let mut n = 0u32;
    for v in values {
        acc |= (v as u64) << n;
        n += bits as u32;
        if n >= 32 {
            out.push(acc as u32 as i32);
            acc >>= 32;
            n -= 32;
        }
    }
    debug_assert_eq!(n, 0);
}

/// Converts a quantized matrix to AutoGPTQ's tensors.
///
/// Errors: [`QuantError::BadGrid`] for grids without an integer zero point
/// (Q4_1, asymmetric tern); [`QuantError::BadShape`] when `rows·bits` is
/// not a multiple of 32 (the zero points of a group fill whole words).
pub fn to_hf_gptq(q: &QuantizedMatrix) -> Result<HfGptq, QuantError> {
    let (zero, shift) = zero_point(q.grid)?;
    let bits = q.grid.bits();
    let (rows, cols, gs) = (q.rows, q.cols, q.grid.group());
    if !(rows * bits as usize).is_multiple_of(32) {
        return Err(QuantError::BadShape(format!(
            "{rows} output features × {bits} bits do not fill whole 32-bit words of zero points"
        )));
    }
    let ng = cols / gs;
    let codes = q.codes();
    // qweight [cols·bits/32, rows]: for each output r, the stream over
    // inputs; word k of that stream lands at [k, r].
    let words_per_col = cols * bits as usize / 32;
    let mut qweight = vec![0i32; words_per_col * rows];
    let mut col_words = Vec::with_capacity(words_per_col);
    for r in 0..rows {
        col_words.clear();
        let row = &codes[r * cols..(r + 1) * cols];
        pack_stream(
            row.iter().map(|&c| c.wrapping_add(shift) as u32),
            bits,
            &mut col_words,
        );
        for (k, &wd) in col_words.iter().enumerate() {
            qweight[k * rows + r] = wd;
        }
    }
    let mut qzeros = Vec::with_capacity(ng * rows * bits as usize / 32);
    for _ in 0..ng {
        pack_stream((0..rows).map(|_| zero - 1), bits, &mut qzeros);
    }
    let mut scales = vec![f16::ZERO; ng * rows];
    for r in 0..rows {
        for g in 0..ng {
            scales[g * rows + r] = q.scales()[r * ng + g];
        }
    }
    Ok(HfGptq {
        bits,
        group_size: gs,
        qweight,
        qzeros,
        scales,
        g_idx: (0..cols).map(|i| (i / gs) as i32).collect(),
        in_features: cols,
        out_features: rows,
    })
}

/// A safetensors file under construction: named tensors, written in the
/// order added, with `{"__metadata__": {"format": "pt"}}`.
#[derive(Default, Debug)]
pub struct Safetensors {
    tensors: Vec<(String, &'static str, Vec<usize>, Vec<u8>)>,
}

impl Safetensors {
    /// An empty file.
    pub fn new() -> Safetensors {
        Safetensors::default()
    }

    /// Adds a tensor: dtype is a safetensors name ("I32", "F16", "F32", …),
    /// `data` its little-endian bytes. Names must be unique (not checked
    /// here beyond JSON escaping; loaders reject duplicates).
    pub fn add(
        &mut self,
        name: impl Into<String>,
        dtype: &'static str,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) {
        self.tensors.push((name.into(), dtype, shape, data));
    }

    /// Adds a layer's four GPTQ tensors as `{prefix}.qweight` and so on
    /// (prefix e.g. `model.layers.0.self_attn.q_proj`).
    pub fn add_gptq(&mut self, prefix: &str, t: &HfGptq) {
        for (suffix, dtype, shape, data) in t.tensors() {
            self.add(format!("{prefix}.{suffix}"), dtype, shape, data);
        }
    }

    /// Writes the file: the u64 header length, the JSON header padded with
    /// spaces to a multiple of 8, then the tensor data back to back.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
        let mut offset = 0usize;
        for (name, dtype, shape, data) in &self.tensors {
            let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            header.push_str(&format!(
                ",{}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
                json_string(name),
                shape.join(","),
                offset + data.len()
            ));
            offset += data.len();
        }
        header.push('}');
        while !header.len().is_multiple_of(8) {
            header.push(' ');
        }
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for (_, _, _, data) in &self.tensors {
            w.write_all(data)?;
        }
        Ok(())
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
