//! Print the top logits of the last position for a prompt of token ids: a
//! quick way to compare tern with `ref_forward.py --top` by eye.
//!
//! `cargo run --release -p tern-runtime --example top_logits -- MODEL.gguf 1,504,3458 [TOP]`

use tern_runtime::{Batch, KvType, Model, ModelParams, SessionParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: top_logits MODEL.gguf TOKEN,TOKEN,... [TOP]".into());
    }
    let tokens: Vec<u32> = args[2]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let top: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let model = Model::load(&args[1], &ModelParams::default())?;
    let mut session = model.new_session(&SessionParams {
        n_ctx: tokens.len().max(1),
        kv_type: KvType::F32,
        ..Default::default()
    })?;
    let logits = session.forward(&Batch::new(&tokens, 0))?;
    let row = logits.row(0).ok_or("no logits")?;
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    for &i in order.iter().take(top) {
        println!("{i}\t{:.6}", row[i]);
    }
    Ok(())
}
