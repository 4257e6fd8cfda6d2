//! The BUILD-INFO file of a bundle, and the two small facts it needs that
//! have no dependency-free source: a UTC timestamp and the newest glibc
//! symbol version a binary asks for.

use crate::profiles::{Profile, Threads};
use std::fmt::Write as _;

/// Everything BUILD-INFO records about one bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo<'a> {
    /// The profile the bundle was built for.
    pub profile: &'a Profile,
    /// tern's workspace version.
    pub version: String,
    /// `git rev-parse HEAD`, with `-dirty` when tracked files had changes.
    pub commit: String,
    /// `rustc -V`.
    pub rustc: String,
    /// When the build ran, ISO 8601 UTC.
    pub date: String,
    /// The features actually passed to cargo.
    pub features: Vec<String>,
    /// Whether the CUDA backend is in the binaries.
    pub cuda_included: bool,
    /// Flags beyond the profile's that the build environment added
    /// (`RUSTFLAGS`).
    pub extra_rustflags: Vec<String>,
    /// The linker used, `None` for the default.
    pub linker: Option<String>,
    /// Binary names with their sizes in bytes.
    pub binaries: Vec<(String, u64)>,
    /// The newest `GLIBC_x.y` the binaries require, if it could be read.
    pub min_glibc: Option<(u32, u32)>,
}

impl BuildInfo<'_> {
    /// The `tern -t` advice for this bundle: a GPU profile built without
    /// CUDA computes on the CPU, so it gets all cores, not the GPU count.
    pub fn threads(&self) -> Threads {
        match self.profile.threads {
            Threads::Fixed(_) if !self.cuda_included => Threads::AllCores,
            t => t,
        }
    }

    /// The file's text: `key: value` lines, stable order, for people and
    /// for `grep`.
    pub fn render(&self) -> String {
        let p = self.profile;
        let mut s = String::new();
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(s, "{k:<14} {v}");
        };
        line("profile:", p.name);
        line("device:", p.description);
        line("tern version:", &self.version);
        line("git commit:", &self.commit);
        line("rustc:", &self.rustc);
        line("built:", &self.date);
        line("target:", p.triple);
        line("target-cpu:", p.target_cpu);
        line("linker:", self.linker.as_deref().unwrap_or("default (cc)"));
        let extra = if self.extra_rustflags.is_empty() {
            String::new()
        } else {
            format!(" (plus RUSTFLAGS: {})", self.extra_rustflags.join(" "))
        };
        line(
            "rustflags:",
            &format!("-C target-cpu={}{extra}", p.target_cpu),
        );
        let features = if self.features.is_empty() {
            "(none)".to_string()
        } else {
            self.features.join(", ")
        };
        line("features:", &features);
        let cuda = match (p.cuda_arch_name(), self.cuda_included) {
            (None, _) => "no (CPU profile)".to_string(),
            (Some(a), true) => format!("yes, {a}"),
            (Some(a), false) => format!(
                "NOT INCLUDED: the profile asks for {a}, but the cuda feature is not \
                 implemented yet; this is a CPU-only build (--cpu-only)"
            ),
        };
        line("cuda:", &cuda);
        let bins: Vec<String> = self
            .binaries
            .iter()
            .map(|(n, size)| format!("{n} ({size} bytes)"))
            .collect();
        line("binaries:", &bins.join(", "));
        let glibc = match self.min_glibc {
            Some((a, b)) => format!(">= {a}.{b}"),
            None => "unknown (readelf not found)".to_string(),
        };
        line("needs glibc:", &glibc);
        line(
            "tuning:",
            &format!(
                "--kv-type {}, {} (advice; tern does not read this file)",
                p.kv_type.flag(),
                self.threads().advice()
            ),
        );
        s
    }
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
///
/// Days to a civil date by the usual era arithmetic (400-year eras of
/// 146097 days, years starting in March so the leap day comes last).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The newest `GLIBC_major.minor` named in `readelf -V` output: the oldest
/// glibc a dynamically linked binary can load on.
pub fn max_glibc(readelf: &str) -> Option<(u32, u32)> {
    let mut best = None;
    for word in readelf.split(|c: char| c.is_whitespace() || c == ':') {
        let Some(v) = word.strip_prefix("GLIBC_") else {
            continue;
        };
        let mut parts = v.split('.');
        let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
            best = best.max(Some((a, b)));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::find;

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(utc_timestamp(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn the_newest_glibc_version_wins() {
        let text = "  0x0010: Name: GLIBC_2.17  Flags: none\n  0x0020: Name: GLIBC_2.34  \
                    Flags: none\n 0x0030: Name: GLIBC_2.9 \n Name: GLIBC_PRIVATE\n";
        assert_eq!(max_glibc(text), Some((2, 34)));
        assert_eq!(max_glibc("no versions here"), None);
    }

    fn info(profile: &'static str, cuda_included: bool) -> BuildInfo<'static> {
        BuildInfo {
            profile: find(profile).unwrap(),
            version: "0.1.0".into(),
            commit: "abc123".into(),
            rustc: "rustc 1.95.0".into(),
            date: "2026-01-01T00:00:00Z".into(),
            features: vec![],
            cuda_included,
            extra_rustflags: vec![],
            linker: Some("aarch64-linux-gnu-gcc".into()),
            binaries: vec![("tern".into(), 42)],
            min_glibc: Some((2, 34)),
        }
    }

    #[test]
    fn build_info_names_profile_commit_rustc_and_date() {
        let text = info("cpu-aarch64", false).render();
        for want in [
            "profile:       cpu-aarch64",
            "git commit:    abc123",
            "rustc:         rustc 1.95.0",
            "built:         2026-01-01T00:00:00Z",
            "target:        aarch64-unknown-linux-gnu",
            "cuda:          no (CPU profile)",
            "binaries:      tern (42 bytes)",
            "needs glibc:   >= 2.34",
            "tuning:        --kv-type f16, no -t (tern's default: all cores)",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn a_cpu_only_gpu_bundle_says_so_and_uses_every_core() {
        let i = info("rtx4090", false);
        assert!(i
            .render()
            .contains("the cuda feature is not implemented yet"));
        assert_eq!(i.threads(), Threads::AllCores);
        assert_eq!(info("rtx4090", true).threads(), Threads::Fixed(4));
    }
}
