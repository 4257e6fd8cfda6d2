//! Hugging Face GPTQ export: the safetensors file, read back here with an
//! independent decoder (`w = scale · (q − (qzero + 1))`), gives exactly
//! `QuantizedMatrix::dequantize()`; AutoGPTQ's 3-bit word layout; grids
//! without integer zero points are refused.

use tern_quant::hf::{to_hf_gptq, Safetensors};
use tern_quant::{quantize, GptqParams, Grid, Hessian, QuantError, Scheme};

struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Reads tensor `name` of a safetensors file: (dtype, shape, bytes).
fn read_tensor<'a>(file: &'a [u8], name: &str) -> (String, Vec<usize>, &'a [u8]) {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&file[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    let t = &header[name];
    let shape = t["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let off = t["data_offsets"].as_array().unwrap();
    let (a, b) = (
        off[0].as_u64().unwrap() as usize,
        off[1].as_u64().unwrap() as usize,
    );
    (
        t["dtype"].as_str().unwrap().to_string(),
        shape,
        &file[8 + n + a..8 + n + b],
    )
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Bits `[at, at + bits)` of a little-endian stream of 32-bit words.
fn bits_at(words: &[u32], at: usize, bits: usize) -> u32 {
    let mut v = 0u32;
    for k in 0..bits {
        let p = at + k;
        v |= ((words[p / 32] >> (p % 32)) & 1) << k;
    }
    v
}

#[test]
fn exported_tensors_decode_to_dequantize() {
    let mut rng = Rng(77);
    let (rows, cols) = (64, 256);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() * 0.1).collect();
    let x: Vec<f32> = (0..128 * cols).map(|_| rng.unit()).collect();
    let mut h = Hessian::new(cols);
    h.add_sequence(&x, 128, 4);
    let mut grids = vec![Grid::Q4_0, Grid::Q8_0];
    for bits in [2u8, 3, 4, 8] {
        for group in [32usize, 64, 128] {
            grids.push(Grid::Tern {
                bits,
                group,
                sym: true,
            });
        }
    }
    for grid in grids {
        let p = GptqParams {
            act_order: true,
            ..GptqParams::default()
        };
        let (q, _) = quantize(&w, rows, cols, grid, Scheme::Gptq, Some(&h), &p).unwrap();
        let t = to_hf_gptq(&q).unwrap();
        let mut st = Safetensors::new();
        st.add_gptq("model.layers.0.mlp.up_proj", &t);
        let mut file = Vec::new();
        st.write_to(&mut file).unwrap();

        let name = |s: &str| format!("model.layers.0.mlp.up_proj.{s}");
        let b = grid.bits() as usize;
        let gs = grid.group();
        let (dt, shape, qw) = read_tensor(&file, &name("qweight"));
        assert_eq!(
            (dt.as_str(), shape.as_slice()),
            ("I32", &[cols * b / 32, rows][..])
        );
        let qw: Vec<u32> = i32s(qw).into_iter().map(|v| v as u32).collect();
        let (_, zshape, qz) = read_tensor(&file, &name("qzeros"));
        assert_eq!(zshape, vec![cols / gs, rows * b / 32]);
        let qz: Vec<u32> = i32s(qz).into_iter().map(|v| v as u32).collect();
        let (sdt, sshape, sc) = read_tensor(&file, &name("scales"));
        assert_eq!((sdt.as_str(), sshape), ("F16", vec![cols / gs, rows]));
        let sc: Vec<f32> = sc
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let (_, _, gi) = read_tensor(&file, &name("g_idx"));
        let gi = i32s(gi);

        let deq = q.dequantize();
        let words_per_row_z = rows * b / 32;
        for r in 0..rows {
            // Column r of qweight as its own word stream.
            let col: Vec<u32> = (0..cols * b / 32).map(|k| qw[k * rows + r]).collect();
            for i in 0..cols {
                let g = gi[i] as usize;
                assert_eq!(g, i / gs);
                let code = bits_at(&col, i * b, b);
                let zrow = &qz[g * words_per_row_z..(g + 1) * words_per_row_z];
                let zero = bits_at(zrow, r * b, b) + 1;
                let v = sc[g * rows + r] * (code as i32 - zero as i32) as f32;
                assert_eq!(
                    v.to_bits(),
                    deq[r * cols + i].to_bits(),
                    "{grid:?} [{r},{i}]"
                );
            }
        }
        assert!(t.quantization_config().contains(&format!("\"bits\": {b}")));
    }
}

#[test]
fn three_bit_codes_straddle_words_as_autogptq_packs_them() {
    // Codes 0..32 of one output column, value 10 straddles words 0 and 1.
    let rows = 32;
    let cols = 32;
    let grid = Grid::Tern {
        bits: 3,
        group: 32,
        sym: true,
    };
    // One row with weights that quantize to the codes 0..7 repeating.
    let w: Vec<f32> = (0..rows * cols)
        .map(|k| ((k % cols) % 8) as f32 - 4.0)
        .collect();
    let (q, _) = quantize(
        &w,
        rows,
        cols,
        grid,
        Scheme::Rtn,
        None,
        &GptqParams::default(),
    )
    .unwrap();
    let codes: Vec<u32> = q.codes()[..cols].iter().map(|&c| c as u32).collect();
    let t = to_hf_gptq(&q).unwrap();
    let word = |k: usize| t.qweight[k * rows] as u32;
    // Word 0: codes 0..9 in bits 0..29, then the low 2 bits of code 10.
    let mut w0 = 0u32;
    for (i, &c) in codes.iter().enumerate().take(10) {
        w0 |= c << (3 * i);
    }
    w0 |= (codes[10] & 3) << 30;
    assert_eq!(word(0), w0);
    assert_eq!(word(1) & 1, codes[10] >> 2);
    assert_eq!((word(1) >> 1) & 7, codes[11]);
    assert_eq!(word(2) >> 29, codes[31]);
}

#[test]
fn grids_without_integer_zero_points_are_refused() {
    let w = vec![0.5f32; 32 * 32];
    for grid in [
        Grid::Q4_1,
        Grid::Tern {
            bits: 4,
            group: 32,
            sym: false,
        },
    ] {
        let (q, _) = quantize(&w, 32, 32, grid, Scheme::Rtn, None, &GptqParams::default()).unwrap();
        assert!(matches!(to_hf_gptq(&q), Err(QuantError::BadGrid(_))));
    }
    // 3 bits × 16 outputs does not fill whole words of zero points.
    let g = Grid::Tern {
        bits: 3,
        group: 32,
        sym: true,
    };
    let (q, _) = quantize(
        &w[..16 * 32],
        16,
        32,
        g,
        Scheme::Rtn,
        None,
        &GptqParams::default(),
    )
    .unwrap();
    assert!(matches!(to_hf_gptq(&q), Err(QuantError::BadShape(_))));
}
