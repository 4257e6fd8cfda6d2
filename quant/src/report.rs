//! The per-layer report of a quantization run: a table for people and the
//! same numbers as JSON.
//!
//! Each quantized matrix reports its relative proxy output error
//! `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` (see [`crate::LayerReport`]) for the chosen
//! scheme and for round-to-nearest on the same grid, so GPTQ's gain is
//! visible per matrix. Without calibration `H = I`: relative weight error.

use serde_json::{json, Value};

use crate::pipeline::{ActStat, QuantizedTensor, Timings, LINEARS};

/// Everything the report says about a run besides the matrices.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// Input and output paths as given.
    pub input: String,
    /// The output path.
    pub output: String,
    /// `rtn`, `gptq` or `p-gptq`.
    pub scheme: String,
    /// Stored type of the quantized linears.
    pub ty: String,
    /// Bits per code.
    pub bits: u8,
    /// Weights per group.
    pub group: usize,
    /// Symmetric grid.
    pub sym: bool,
    /// GPTQ act-order.
    pub act_order: bool,
    /// Relative dampening.
    pub damp: f64,
    /// Positions skipped (or weighted) per sequence (P-GPTQ).
    pub prefix_skip: usize,
    /// P-GPTQ's prefix weight λ at q/k/v, attn_output, gate/up and
    /// ffn_down (`pipeline::PrefixWeights`); `None` for other schemes.
    pub prefix_weights: Option<[f32; 4]>,
    /// Calibration: file, sha256, samples, sequence length, text tokens.
    pub calib: Option<(String, String, usize, usize, usize)>,
    /// Threads.
    pub threads: usize,
    /// Forward path: "fast" or "exact".
    pub path: &'static str,
    /// Phase timings.
    pub timings: Timings,
    /// Seconds writing and verifying the output.
    pub write_secs: f64,
    /// Seconds in all.
    pub total_secs: f64,
    /// Output file size in bytes.
    pub output_bytes: u64,
}

/// Mean of `f` over `ts`, 0 when empty.
fn mean(ts: &[QuantizedTensor], f: impl Fn(&QuantizedTensor) -> f64) -> f64 {
    if ts.is_empty() {
        return 0.0;
    }
    ts.iter().map(f).sum::<f64>() / ts.len() as f64
}

/// The report as a table: one row per block with each linear's error in
/// percent, then the means and timings.
pub fn table(info: &RunInfo, ts: &[QuantizedTensor]) -> String {
    let mut s = String::new();
    let what = if info.calib.is_some() {
        "relative proxy output error tr(ΔW H ΔWᵀ)/tr(W H Wᵀ), %"
    } else {
        "relative weight error ‖ΔW‖²/‖W‖², % (no calibration)"
    };
    s.push_str(&format!(
        "{} {}-bit g{} {}{} into {}: {what}\n",
        info.scheme,
        info.bits,
        info.group,
        if info.sym { "sym" } else { "asym" },
        if info.act_order { " act-order" } else { "" },
        info.ty
    ));
    s.push_str(&format!("{:>5}", "block"));
    for l in LINEARS {
        s.push_str(&format!(" {l:>11}"));
    }
    s.push('\n');
    let n_layer = ts.iter().map(|t| t.layer + 1).max().unwrap_or(0);
    for il in 0..n_layer {
        s.push_str(&format!("{il:>5}"));
        for l in LINEARS {
            match ts.iter().find(|t| t.layer == il && t.linear == l) {
                Some(t) => s.push_str(&format!(" {:>11.4}", 100.0 * t.report.err)),
                None => s.push_str(&format!(" {:>11}", "-")),
            }
        }
        s.push('\n');
    }
    let mut other: Vec<(String, usize)> = Vec::new();
    for t in ts.iter().filter(|t| t.ty.to_string() != info.ty) {
        match other.iter_mut().find(|(n, _)| *n == t.ty.to_string()) {
            Some((_, c)) => *c += 1,
            None => other.push((t.ty.to_string(), 1)),
        }
    }
    for (ty, n) in other {
        let why = if info.ty == "Q4_0" && ty == "Q4_1" {
            "ffn_down of the first eighth of the blocks (the calibrated Q4_0 mixture; --pure \
             turns it off)"
                .to_string()
        } else {
            format!("their column count is not a multiple of {}", info.group)
        };
        s.push_str(&format!("note: {n} matrices are stored as {ty}: {why}\n"));
    }
    s.push_str(&format!(
        "mean error {:.4}% ({} matrices); round-to-nearest on the same grid: {:.4}%\n",
        100.0 * mean(ts, |t| t.report.err),
        ts.len(),
        100.0 * mean(ts, |t| t.report.err_rtn_proxy),
    ));
    let t = &info.timings;
    s.push_str(&format!(
        "time: calibration {:.1} s (Hessians {:.1} s), quantization {:.1} s, writing {:.1} s, total {:.1} s ({} threads, {} path); output {:.1} MiB\n",
        t.calibrate,
        t.hessian,
        t.quantize,
        info.write_secs,
        info.total_secs,
        info.threads,
        info.path,
        info.output_bytes as f64 / (1024.0 * 1024.0)
    ));
    s
}

/// The report as one JSON object.
pub fn json(info: &RunInfo, ts: &[QuantizedTensor]) -> Value {
    let tensors: Vec<Value> = ts
        .iter()
        .map(|t| {
            let r = &t.report;
            json!({
                "name": t.name,
                "layer": t.layer,
                "linear": t.linear,
                "type": t.ty.to_string(),
                "rows": r.rows,
                "cols": r.cols,
                "err": r.err,
                "err_rtn": r.err_rtn_proxy,
                "gptq_loss": r.gptq_loss,
                "damp": r.damp,
                "dead_cols": r.dead_cols,
                "secs": r.secs,
            })
        })
        .collect();
    let calib = info
        .calib
        .as_ref()
        .map(|(file, sha, samples, seq_len, tokens)| {
            json!({
                "file": file,
                "sha256": sha,
                "samples": samples,
                "seq_len": seq_len,
                "text_tokens": tokens,
            })
        });
    json!({
        "input": info.input,
        "output": info.output,
        "scheme": info.scheme,
        "type": info.ty,
        "bits": info.bits,
        "group": info.group,
        "sym": info.sym,
        "act_order": info.act_order,
        "damp": info.damp,
        "prefix_skip": info.prefix_skip,
        "prefix_weights": info.prefix_weights.map(|w| json!({
            "qkv": w[0],
            "o": w[1],
            "gate_up": w[2],
            "down": w[3],
        })),
        "calibration": calib,
        "threads": info.threads,
        "path": info.path,
        "timings": {
            "calibrate_s": info.timings.calibrate,
            "hessian_s": info.timings.hessian,
            "quantize_s": info.timings.quantize,
            "write_s": info.write_secs,
            "total_s": info.total_secs,
        },
        "output_bytes": info.output_bytes,
        "mean_err": mean(ts, |t| t.report.err),
        "mean_err_rtn": mean(ts, |t| t.report.err_rtn_proxy),
        "tensors": tensors,
    })
}

/// Activation statistics as tab-separated text: one line per block and
/// linear input with the mean squared norm at positions 0-7, the mean after
/// them, the largest magnitudes, the channel of position 0's largest one
/// and the share of the Hessian's trace from the first 1 and 4 positions.
pub fn act_stats_tsv(stats: &[ActStat]) -> String {
    let mut s = String::from("layer\tsite");
    let p = stats.first().map_or(0, |a| a.pos_sq.len());
    for t in 0..p {
        s.push_str(&format!("\tsq{t}"));
    }
    s.push_str("\tsq_rest");
    for t in 0..p {
        s.push_str(&format!("\tmax{t}"));
    }
    s.push_str("\tmax_rest\targmax0\tshare1\tshare4\n");
    for a in stats {
        s.push_str(&format!("{}\t{}", a.layer, a.site));
        for v in &a.pos_sq {
            s.push_str(&format!("\t{v:.4e}"));
        }
        s.push_str(&format!("\t{:.4e}", a.rest_sq));
        for v in &a.pos_max {
            s.push_str(&format!("\t{v:.4e}"));
        }
        s.push_str(&format!(
            "\t{:.4e}\t{}\t{:.4}\t{:.4}\n",
            a.rest_max,
            a.pos0_argmax,
            a.prefix_share(1),
            a.prefix_share(4)
        ));
    }
    s
}
