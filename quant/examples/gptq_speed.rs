//! Times Hessian accumulation and GPTQ on SmolLM2-135M-shaped matrices
//! with random data: `cargo run --release -p tern-quant --example gptq_speed`.

use std::time::Instant;

use tern_quant::{quantize, GptqParams, Grid, Hessian, Scheme};

fn main() {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let n_seq: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let n_tok = 512;
    let grid = Grid::Tern {
        bits: 4,
        group: 128,
        sym: false,
    };
    let mut total_h = 0.0;
    let mut total_q = 0.0;
    // One transformer layer: the Hessians of the attention input (q, k, v),
    // the o input, the MLP input (gate, up) and the down input.
    for (cols, shapes) in [
        (576usize, vec![576usize, 192, 192]),
        (576, vec![576]),
        (576, vec![1536, 1536]),
        (1536, vec![576]),
    ] {
        let x: Vec<f32> = (0..n_tok * cols).map(|_| rnd()).collect();
        let t = Instant::now();
        let mut h = Hessian::new(cols);
        for _ in 0..n_seq {
            h.add_sequence(&x, n_tok, 4);
        }
        let th = t.elapsed().as_secs_f64();
        total_h += th;
        for rows in shapes {
            let w: Vec<f32> = (0..rows * cols).map(|_| rnd() * 0.05).collect();
            let (_, rep) = quantize(
                &w,
                rows,
                cols,
                grid.fitted(cols).unwrap(),
                Scheme::PGptq,
                Some(&h),
                &GptqParams::default(),
            )
            .unwrap();
            total_q += rep.secs;
            println!("{rows:>5} x {cols:>5}: hessian {th:.3}s ({n_seq} seq), gptq {:.3}s, err {:.2e} rtn {:.2e}", rep.secs, rep.err, rep.err_rtn_proxy);
        }
    }
    println!("per layer: hessian {total_h:.2}s for {n_seq} sequences, gptq {total_q:.2}s");
    println!(
        "SmolLM2-135M (30 layers, 128 sequences): hessian ≈ {:.0}s, gptq ≈ {:.0}s",
        total_h * 30.0 * 128.0 / n_seq as f64,
        total_q * 30.0
    );
}
