//! Packing round trips for every target format: the GGUF bytes of a
//! quantized matrix decode, through the runtime's `dequantize_row`, to
//! exactly `QuantizedMatrix::dequantize()`; RTN bytes equal the runtime's
//! own `quantize_row` (ggml/gguf-py's quantizers for Q4_0/Q4_1/Q8_0).

use tern_quant::{quantize, GptqParams, Grid, Hessian, Scheme};
use tern_runtime::quants::{dequantize_row, quantize_row, vec_dot, GgmlType};

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Every grid tern can store: GGML's three and all 24 tern variants.
fn all_grids() -> Vec<Grid> {
    let mut g = vec![Grid::Q4_0, Grid::Q4_1, Grid::Q8_0];
    for bits in [2u8, 3, 4, 8] {
        for group in [32usize, 64, 128] {
            for sym in [false, true] {
                g.push(Grid::Tern { bits, group, sym });
            }
        }
    }
    g
}

/// Weights with awkward blocks: all zero, ±0, a lone extreme, ties, tiny
/// values, constant runs, then random magnitudes over decades.
fn awkward_weights(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut w: Vec<f32> = (0..rows * cols)
        .map(|i| rng.unit() * [0.002f32, 0.05, 1.0, 7.0][(i / 32) % 4])
        .collect();
    let specials: [&dyn Fn(usize) -> f32; 6] = [
        &|_| 0.0,
        &|j| if j % 2 == 0 { -0.0 } else { 0.0 },
        &|j| if j == 7 { -3.0 } else { 0.25 },
        &|j| if j % 3 == 0 { 1.0 } else { -1.0 },
        &|j| 1e-6 * j as f32,
        &|_| 0.375,
    ];
    for (k, f) in specials.iter().enumerate() {
        for j in 0..32.min(cols) {
            w[k * cols + j] = f(j);
        }
    }
    w
}

fn decode_with_runtime(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let rb = bytes.len() / rows;
    let mut out = vec![0.0f32; rows * cols];
    for (src, dst) in bytes.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
        dequantize_row(ty, src, dst).unwrap();
    }
    out
}

#[test]
fn gguf_bytes_decode_to_dequantize_for_every_grid_and_scheme() {
    let mut rng = Rng(0xfeed);
    let (rows, cols) = (8, 256);
    let w = awkward_weights(&mut rng, rows, cols);
    let mut h = Hessian::new(cols);
    let x: Vec<f32> = (0..64 * cols).map(|_| rng.unit()).collect();
    h.add_sequence(&x, 64, 0);
    for grid in all_grids() {
        for scheme in [Scheme::Rtn, Scheme::Gptq] {
            for act_order in [false, true] {
                let p = GptqParams {
                    act_order,
                    ..GptqParams::default()
                };
                let (q, _) = quantize(&w, rows, cols, grid, scheme, Some(&h), &p).unwrap();
                let ty = q.ggml_type();
                assert_eq!(ty, grid.ggml_type());
                let bytes = q.to_gguf_bytes();
                assert_eq!(
                    bytes.len() as u64,
                    ty.row_bytes(cols as u64).unwrap() * rows as u64
                );
                let deq = q.dequantize();
                let rt = decode_with_runtime(ty, &bytes, rows, cols);
                assert!(
                    deq.iter().zip(&rt).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{grid:?} {scheme:?}"
                );
                // vec_dot agrees with the decoded row (f32 summation order
                // differs, so within rounding).
                let xs: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
                let rb = bytes.len() / rows;
                for r in 0..rows {
                    let dot = vec_dot(ty, &bytes[r * rb..(r + 1) * rb], &xs).unwrap() as f64;
                    let mut want = 0.0f64;
                    let mut mag = 0.0f64;
                    for c in 0..cols {
                        want += deq[r * cols + c] as f64 * xs[c] as f64;
                        mag += (deq[r * cols + c] as f64 * xs[c] as f64).abs();
                    }
                    // Grids with a minimum sum m·Σx separately.
                    let m_mag: f64 = q.mins()
                        [r * cols / grid.group()..(r + 1) * cols / grid.group()]
                        .iter()
                        .map(|m| m.to_f32().abs() as f64)
                        .sum::<f64>()
                        * grid.group() as f64;
                    assert!(
                        (dot - want).abs() <= 1e-5 * (mag + m_mag) + 1e-30,
                        "{grid:?} row {r}: {dot} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn rtn_is_bit_identical_to_the_runtime_quantizers() {
    let mut rng = Rng(42);
    let (rows, cols) = (12, 384);
    let w = awkward_weights(&mut rng, rows, cols);
    let grids = [
        Grid::Q4_0,
        Grid::Q4_1,
        Grid::Q8_0,
        Grid::Tern {
            bits: 2,
            group: 32,
            sym: false,
        },
        Grid::Tern {
            bits: 3,
            group: 64,
            sym: false,
        },
        Grid::Tern {
            bits: 4,
            group: 128,
            sym: false,
        },
        Grid::Tern {
            bits: 8,
            group: 128,
            sym: false,
        },
    ];
    for grid in grids {
        let (q, rep) = quantize(
            &w,
            rows,
            cols,
            grid,
            Scheme::Rtn,
            None,
            &GptqParams::default(),
        )
        .unwrap();
        let ty = q.ggml_type();
        let mut want = vec![0u8; ty.row_bytes(cols as u64).unwrap() as usize * rows];
        let rb = want.len() / rows;
        for (src, dst) in w.chunks_exact(cols).zip(want.chunks_exact_mut(rb)) {
            quantize_row(ty, src, dst).unwrap();
        }
        assert_eq!(q.to_gguf_bytes(), want, "{grid:?}");
        assert!(rep.err > 0.0 && rep.err == rep.err_rtn_proxy);
    }
}
