//! [`QuantizedMatrix`]: a quantized weight matrix as codes plus per-group
//! scales and minimums, its decoded values, and its bytes in the GGUF type
//! that stores its grid.

use half::f16;
use tern_runtime::quants::{tern_gptq, GgmlType};

use crate::grid::{Grid, GroupParams};

/// A quantized `rows × cols` matrix (rows = output features, cols = input
/// features), in natural column order.
///
/// Codes are one byte per element, row-major: the unsigned code for Q4_0
/// (0..=15, value `d·(q−8)`), Q4_1 and tern (0..=2^bits−1, value `d·q + m`),
/// and the two's-complement byte of the signed code for Q8_0 (value `d·q`).
/// Scales and minimums are one per row and group of `grid.group()` columns,
/// row-major (`row · cols/group + group`); minimums are zero for Q4_0 and
/// Q8_0.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedMatrix {
    /// Output features.
    pub rows: usize,
    /// Input features (a multiple of the grid's group).
    pub cols: usize,
    /// The target format.
    pub grid: Grid,
    codes: Vec<u8>,
    scales: Vec<f16>,
    mins: Vec<f16>,
}

impl QuantizedMatrix {
    /// Assembles a matrix; lengths were established by the quantizer.
    pub(crate) fn from_parts(
        rows: usize,
        cols: usize,
        grid: Grid,
        codes: Vec<u8>,
        params: Vec<GroupParams>,
    ) -> QuantizedMatrix {
        debug_assert_eq!(codes.len(), rows * cols);
        debug_assert_eq!(params.len(), rows * (cols / grid.group()));
        QuantizedMatrix {
            rows,
            cols,
            grid,
            codes,
            scales: params.iter().map(|p| p.d).collect(),
            mins: params.iter().map(|p| p.m).collect(),
        }
    }

    /// The codes, row-major (see the type's docs for their meaning).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The f16 scale of each (row, group), row-major.
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// The f16 minimum of each (row, group), row-major (zero for Q4_0, Q8_0).
    pub fn mins(&self) -> &[f16] {
        &self.mins
    }

    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.cols / self.grid.group()
    }

    fn params(&self, i: usize) -> GroupParams {
        GroupParams {
            d: self.scales[i],
            m: self.mins[i],
        }
    }

    /// The decoded matrix, `rows × cols`, row-major: exactly what the
    /// runtime's `dequantize_row` gives for [`QuantizedMatrix::to_gguf_bytes`].
    pub fn dequantize(&self) -> Vec<f32> {
        let gs = self.grid.group();
        let mut out = Vec::with_capacity(self.codes.len());
        for (i, codes) in self.codes.chunks_exact(gs).enumerate() {
            let p = self.params(i);
            out.extend(codes.iter().map(|&q| self.grid.decode(p, q)));
        }
        out
    }

    /// The GGUF tensor type of [`QuantizedMatrix::to_gguf_bytes`]: Q4_0, Q4_1,
    /// Q8_0 or tern's `TERN_Q{bits}_G{group}`.
    pub fn ggml_type(&self) -> GgmlType {
        self.grid.ggml_type()
    }

    /// The tensor data exactly as the GGUF type stores it: row after row,
    /// each row its groups' blocks in column order (GGUF dims
    /// `[cols, rows]`).
    pub fn to_gguf_bytes(&self) -> Vec<u8> {
        let gs = self.grid.group();
        let bb = self.ggml_type().type_size() as usize;
        let mut out = vec![0u8; self.codes.len() / gs * bb];
        for (i, (codes, block)) in self
            .codes
            .chunks_exact(gs)
            .zip(out.chunks_exact_mut(bb))
            .enumerate()
        {
            let p = self.params(i);
            block[..2].copy_from_slice(&p.d.to_le_bytes());
            match self.grid {
                Grid::Q4_0 => pack_q4(codes, &mut block[2..]),
                Grid::Q4_1 => {
                    block[2..4].copy_from_slice(&p.m.to_le_bytes());
                    pack_q4(codes, &mut block[4..]);
                }
                Grid::Q8_0 => block[2..].copy_from_slice(codes),
                Grid::Tern { bits, .. } => {
                    block[2..4].copy_from_slice(&p.m.to_le_bytes());
                    tern_gptq::pack_codes(codes, bits, &mut block[4..]);
                }
            }
        }
        out
    }
}

/// GGML's 4-bit packing of 32 codes: byte j holds code j in its low nibble
/// and code j + 16 in its high nibble.
fn pack_q4(codes: &[u8], out: &mut [u8]) {
    for (j, o) in out.iter_mut().enumerate() {
        *o = (codes[j] & 0x0f) | (codes[j + 16] << 4);
    }
}
