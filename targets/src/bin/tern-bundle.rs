//! `tern-bundle`: builds a release bundle for one device profile into
//! `dist/<profile>/` and `dist/<profile>.tar.gz`. Every failure is one
//! `error:` line and a non-zero exit (2 for bad arguments).

use std::process::ExitCode;
use tern_targets::{bundle, profiles, PROFILES};

const USAGE: &str = "usage: tern-bundle [--cpu-only] PROFILE | --list | --help";

fn help() -> String {
    format!(
        "{USAGE}\n\n\
         Builds tern for PROFILE (cargo build --release --target ...) and writes\n\
         dist/PROFILE/ (binaries, README.md, BUILD-INFO) and dist/PROFILE.tar.gz.\n\n\
         --cpu-only  build a GPU profile without the cuda feature (which is not\n\
         \x20           implemented yet); BUILD-INFO records that it is CPU-only\n\
         --list      print the profiles\n\n\
         profiles: {}",
        profiles::names().join(", ")
    )
}

fn list() {
    println!(
        "{:<12} {:<26} {:<13} {:<6} {:<18} {:<4} threads",
        "profile", "triple", "target-cpu", "cuda", "features", "kv"
    );
    for p in PROFILES {
        let features = if p.features.is_empty() {
            "-".to_string()
        } else {
            p.features.join(",")
        };
        println!(
            "{:<12} {:<26} {:<13} {:<6} {:<18} {:<4} {}",
            p.name,
            p.triple,
            p.target_cpu,
            p.cuda_arch_name().unwrap_or_else(|| "-".into()),
            features,
            p.kv_type.flag(),
            p.threads
        );
    }
}

fn main() -> ExitCode {
    let mut cpu_only = false;
    let mut name = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--cpu-only" => cpu_only = true,
            "--list" => {
                list();
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("{}", help());
                return ExitCode::SUCCESS;
            }
            a if a.starts_with('-') => {
                eprintln!("error: unknown flag '{a}' ({USAGE})");
                return ExitCode::from(2);
            }
            a if name.is_some() => {
                eprintln!("error: one profile at a time, got '{a}' too ({USAGE})");
                return ExitCode::from(2);
            }
            a => name = Some(a.to_string()),
        }
    }
    let Some(name) = name else {
        eprintln!(
            "error: no profile given ({USAGE}; profiles: {})",
            profiles::names().join(", ")
        );
        return ExitCode::from(2);
    };
    let profile = match profiles::find(&name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match bundle::build(profile, cpu_only) {
        Ok(b) => {
            print!("{}", b.build_info);
            println!("bundle:        {}", b.dir.display());
            println!("archive:       {}", b.archive.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
