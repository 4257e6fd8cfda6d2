//! Checks tern's importance-weighted RTN ([`tern_quant::weighted_rtn`])
//! against llama.cpp's own `llama-quantize --imatrix` output, block by
//! block: given the same f32 weights and llama.cpp's importance matrix, how
//! many Q4_0 blocks come out bit-identical.
//!
//! ```sh
//! cargo run --release -p tern-quant --example imatrix_check -- \
//!     REF_F32.gguf IMATRIX.gguf LLAMACPP_Q4_0.gguf
//! ```
//!
//! `REF_F32.gguf` is the f32 model llama-quantize read, `IMATRIX.gguf` the
//! `llama-imatrix` output (GGUF form: `<tensor>.in_sum2` and
//! `<tensor>.counts`; the importance is `in_sum2 / counts`, as
//! llama-quantize loads it), `LLAMACPP_Q4_0.gguf` llama-quantize's file.
//! Only the tensors stored there as Q4_0 with an importance entry are
//! compared (llama.cpp's Q4_1 `ffn_down` of the mixture uses another rule).

use std::process::ExitCode;

use half::f16;
use tern_quant::{weighted_rtn, Grid};
use tern_runtime::gguf::GgufFile;
use tern_runtime::quants::GgmlType;

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [r, i, l] = &args[..] else {
        eprintln!("error: usage: imatrix_check REF_F32.gguf IMATRIX.gguf LLAMACPP_Q4_0.gguf");
        return ExitCode::from(2);
    };
    let open = |p: &str| {
        GgufFile::open(p).map_err(|e| {
            eprintln!("error: cannot open {p}: {e}");
            ExitCode::from(1)
        })
    };
    let (rf, imf, lf) = match (open(r), open(i), open(l)) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => return e,
    };
    let (mut blocks, mut same, mut same_d, mut codes_diff, mut tensors) = (0usize, 0, 0, 0, 0);
    for t in lf.tensors() {
        if t.ty != GgmlType::Q4_0 || !t.name.starts_with("blk.") {
            continue;
        }
        let (Some(sums), Some(counts), Some(src)) = (
            imf.tensor(&format!("{}.in_sum2", t.name)),
            imf.tensor(&format!("{}.counts", t.name)),
            rf.tensor(&t.name),
        ) else {
            continue;
        };
        if src.ty != GgmlType::F32 {
            eprintln!("error: {} is not f32 in {r}", t.name);
            return ExitCode::from(1);
        }
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let count = f32s(imf.tensor_data(counts))[0];
        let imp: Vec<f32> = f32s(imf.tensor_data(sums))
            .iter()
            .map(|&s| if count > 0.0 { s / count } else { 1.0 })
            .collect();
        let w = f32s(rf.tensor_data(src));
        let (codes, params) = match weighted_rtn(&w, rows, cols, Grid::Q4_0, &imp) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {}: {e}", t.name);
                return ExitCode::from(1);
            }
        };
        let data = lf.tensor_data(t);
        let mut t_same = 0;
        for (b, blk) in data.chunks_exact(18).enumerate() {
            let d = f16::from_le_bytes([blk[0], blk[1]]);
            let mut lq = [0u8; 32];
            for j in 0..16 {
                lq[j] = blk[2 + j] & 15;
                lq[j + 16] = blk[2 + j] >> 4;
            }
            let tq = &codes[b * 32..(b + 1) * 32];
            let dsame = d.to_bits() == params[b].d.to_bits();
            let nd = lq.iter().zip(tq).filter(|(a, b)| a != b).count();
            blocks += 1;
            same_d += dsame as usize;
            codes_diff += nd;
            if dsame && nd == 0 {
                same += 1;
                t_same += 1;
            }
        }
        tensors += 1;
        println!("{}: {t_same}/{} blocks identical", t.name, data.len() / 18);
    }
    println!(
        "{tensors} tensors, {blocks} Q4_0 blocks: {same} identical ({:.4}%), {same_d} with the same \
         scale, {codes_diff} codes differ",
        100.0 * same as f64 / blocks.max(1) as f64
    );
    ExitCode::SUCCESS
}
