//! The profile table: one [`Profile`] per device class tern ships for, and
//! lookup by name.
//!
//! Profiles are plain data in a `const` table rather than files parsed at
//! run time: the compiler checks every field, nothing can fail to parse on a
//! user's machine, and adding a device is adding one entry (plus a line in the
//! README's table). The unit tests below check the table's invariants.

use std::fmt;

/// How many CPU threads a profile recommends for `tern -t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Every logical core (tern's own default): right where cores have no
    /// SMT siblings, as on every aarch64 core listed here.
    AllCores,
    /// One per physical core: SMT siblings share the vector units, and the
    /// CPU matmul is compute-bound, so a second thread per core only adds
    /// contention.
    PhysicalCores,
    /// A fixed count: the GPU profiles, where the CPU only tokenizes,
    /// samples and launches kernels.
    Fixed(u32),
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threads::AllCores => f.write_str("all cores (tern's default)"),
            Threads::PhysicalCores => f.write_str("one per physical core"),
            Threads::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Threads {
    /// The advice as `tern` flags, e.g. `-t 4`.
    pub fn advice(self) -> String {
        match self {
            Threads::AllCores => "no -t (tern's default: all cores)".into(),
            Threads::PhysicalCores => "-t <physical cores>".into(),
            Threads::Fixed(n) => format!("-t {n}"),
        }
    }
}

/// The KV-cache element type a profile recommends (`tern --kv-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvType {
    /// Half the memory of f32, with top-1 agreement unchanged on the
    /// reference model (README, "Correctness"); tern's default.
    F16,
    /// Exact activations in the cache, twice the memory.
    F32,
}

impl KvType {
    /// The value as `tern --kv-type` spells it.
    pub fn flag(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }
}

/// A device class tern is built and tuned for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The name used on the command line and in `dist/<name>/`.
    pub name: &'static str,
    /// One line on the device class, for `--list` and BUILD-INFO.
    pub description: &'static str,
    /// The Rust target triple (`cargo build --target`).
    pub triple: &'static str,
    /// The linker cargo should use for `triple`, or `None` for the
    /// toolchain's default `cc` (native builds).
    pub linker: Option<&'static str>,
    /// How to install `linker` when it is missing, shown in the error.
    pub linker_hint: &'static str,
    /// `-C target-cpu=`: the oldest CPU the bundle must run on. SIMD
    /// kernels beyond this baseline are still picked at run time.
    pub target_cpu: &'static str,
    /// Cargo features for the `tern-tools` build, as `cargo --features`
    /// takes them (e.g. `tern-runtime/cuda`).
    pub features: &'static [&'static str],
    /// The CUDA compute capability (`sm_87` → 87), or `None` for CPU-only
    /// profiles. A profile with a CUDA arch needs tern-runtime's `cuda`
    /// feature.
    pub cuda_arch: Option<u32>,
    /// Recommended `tern -t`.
    pub threads: Threads,
    /// Recommended `tern --kv-type`.
    pub kv_type: KvType,
}

impl Profile {
    /// Whether this profile targets a GPU, and so needs the `cuda` feature.
    pub fn needs_cuda(&self) -> bool {
        self.cuda_arch.is_some()
    }

    /// The CUDA arch as nvcc spells it (`sm_87`), if any.
    pub fn cuda_arch_name(&self) -> Option<String> {
        self.cuda_arch.map(|a| format!("sm_{a}"))
    }
}

/// The feature that turns on tern-runtime's CUDA backend (issue 5), as the
/// GPU profiles name it from the `tern-tools` package.
pub const CUDA_FEATURE: &str = "tern-runtime/cuda";

/// Every profile, in the order `--list` prints them.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "cpu-x86_64",
        description: "any x86_64 Linux CPU; AVX2/AVX-512 kernels are picked at run time",
        triple: "x86_64-unknown-linux-gnu",
        linker: None,
        linker_hint: "",
        // The baseline: the bundle runs everywhere and the SIMD kernels
        // detect AVX2 / AVX-512 themselves.
        target_cpu: "x86-64",
        features: &[],
        cuda_arch: None,
        threads: Threads::PhysicalCores,
        kv_type: KvType::F16,
    },
    Profile {
        name: "cpu-aarch64",
        description: "any 64-bit Arm Linux CPU (Raspberry Pi 4/5, Graviton, Ampere, ...); NEON kernels",
        triple: "aarch64-unknown-linux-gnu",
        linker: Some("aarch64-linux-gnu-gcc"),
        linker_hint: "Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
        // ARMv8.0-A: NEON is part of the baseline, so the NEON kernels need
        // nothing more; dotprod and the like are detected at run time.
        target_cpu: "generic",
        features: &[],
        cuda_arch: None,
        threads: Threads::AllCores,
        kv_type: KvType::F16,
    },
    Profile {
        name: "jetson-orin",
        description: "NVIDIA Jetson Orin (AGX, NX, Nano): Cortex-A78AE cores, Ampere GPU sm_87, unified memory",
        triple: "aarch64-unknown-linux-gnu",
        linker: Some("aarch64-linux-gnu-gcc"),
        linker_hint: "Debian/Ubuntu: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
        // ARMv8.2-A with dotprod, fp16 and rcpc: the CPU fallback paths may
        // use them unconditionally on this device.
        target_cpu: "cortex-a78ae",
        features: &[CUDA_FEATURE],
        cuda_arch: Some(87),
        // The A78AE has no SMT; with CUDA the GPU and CPU share memory
        // bandwidth, so the CPU side is kept to every core and no more.
        threads: Threads::AllCores,
        kv_type: KvType::F16,
    },
    Profile {
        name: "rtx4090",
        description: "x86_64 host with an NVIDIA RTX 4090 (Ada, sm_89, 24 GB)",
        triple: "x86_64-unknown-linux-gnu",
        linker: None,
        linker_hint: "",
        // Desktops that carry a 4090 have AVX2 (Zen 2+, Haswell+): x86-64-v3.
        target_cpu: "x86-64-v3",
        features: &[CUDA_FEATURE],
        cuda_arch: Some(89),
        threads: Threads::Fixed(4),
        kv_type: KvType::F16,
    },
    Profile {
        name: "hopper",
        description: "x86_64 server with NVIDIA H100/H200 (Hopper, sm_90)",
        triple: "x86_64-unknown-linux-gnu",
        linker: None,
        linker_hint: "",
        // Sapphire Rapids and Zen 4 hosts have AVX-512, Zen 3 (Milan) hosts
        // do not: stay at v3 and let run-time detection pick AVX-512.
        target_cpu: "x86-64-v3",
        features: &[CUDA_FEATURE],
        cuda_arch: Some(90),
        threads: Threads::Fixed(4),
        kv_type: KvType::F16,
    },
];

/// A profile name that is not in [`PROFILES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownProfile {
    /// The name that was asked for.
    pub name: String,
}

impl fmt::Display for UnknownProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown profile '{}' (known: {})",
            self.name,
            names().join(", ")
        )
    }
}

impl std::error::Error for UnknownProfile {}

/// The names of every profile, in table order.
pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|p| p.name).collect()
}

/// The profile called `name` (exact match), or an error that lists the
/// known names.
pub fn find(name: &str) -> Result<&'static Profile, UnknownProfile> {
    PROFILES
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| UnknownProfile {
            name: name.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_found_by_its_name() {
        for p in PROFILES {
            assert_eq!(find(p.name).unwrap(), p);
        }
    }

    #[test]
    fn the_issue_lists_exactly_these_profiles() {
        assert_eq!(
            names(),
            [
                "cpu-x86_64",
                "cpu-aarch64",
                "jetson-orin",
                "rtx4090",
                "hopper"
            ]
        );
    }

    #[test]
    fn unknown_names_are_an_error_listing_the_known_ones() {
        for bad in ["", "cpu", "Jetson-Orin", "jetson-orin ", "h100"] {
            let err = find(bad).unwrap_err();
            assert_eq!(err.name, bad);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("unknown profile '{bad}'")),
                "{msg}"
            );
            for p in PROFILES {
                assert!(msg.contains(p.name), "{msg} lacks {}", p.name);
            }
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
    }

    #[test]
    fn the_devices_have_the_documented_settings() {
        let orin = find("jetson-orin").unwrap();
        assert_eq!(orin.triple, "aarch64-unknown-linux-gnu");
        assert_eq!(orin.target_cpu, "cortex-a78ae");
        assert_eq!(orin.cuda_arch_name().as_deref(), Some("sm_87"));
        assert_eq!(find("rtx4090").unwrap().cuda_arch, Some(89));
        assert_eq!(find("rtx4090").unwrap().triple, "x86_64-unknown-linux-gnu");
        assert_eq!(find("hopper").unwrap().cuda_arch, Some(90));
        assert!(!find("cpu-x86_64").unwrap().needs_cuda());
        assert!(!find("cpu-aarch64").unwrap().needs_cuda());
    }

    #[test]
    fn the_table_is_consistent() {
        let mut seen = Vec::new();
        for p in PROFILES {
            assert!(!seen.contains(&p.name), "duplicate profile {}", p.name);
            seen.push(p.name);
            // Names are safe as a folder and archive name.
            assert!(
                p.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b)),
                "{}",
                p.name
            );
            // A GPU profile asks for the cuda feature and a CPU one does not.
            assert_eq!(
                p.needs_cuda(),
                p.features.contains(&CUDA_FEATURE),
                "{}",
                p.name
            );
            // Cross targets name their linker and how to get it.
            if p.linker.is_some() {
                assert!(!p.linker_hint.is_empty(), "{}", p.name);
            }
            assert!(
                p.triple.starts_with("x86_64-") || p.triple.starts_with("aarch64-"),
                "{}",
                p.triple
            );
            assert!(!p.target_cpu.is_empty() && !p.description.is_empty());
            if let Threads::Fixed(n) = p.threads {
                assert!(n > 0, "{}", p.name);
            }
        }
    }
}
