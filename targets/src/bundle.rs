//! Building a release bundle for a profile: check the toolchain, run one
//! `cargo build --release --target ...` with the profile's settings, then
//! lay out `dist/<profile>/` (binaries, README.md, BUILD-INFO) and pack it as
//! `dist/<profile>.tar.gz`.
//!
//! The decisions (which features, which binaries, which flags) are made by
//! [`plan`], a pure function tested without running cargo; [`build`] carries
//! a plan out. External programs (cargo, rustc, git, tar, readelf) are run,
//! never assumed: a missing one is an [`Error`] naming how to install it.

use crate::info::{max_glibc, utc_timestamp, BuildInfo};
use crate::profiles::{Profile, UnknownProfile};
use serde_json::Value;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binaries a bundle ships, in order, when the workspace has them.
pub const RELEASE_BINARIES: &[&str] = &["tern", "tern-quantize"];

/// The package that owns `tern` (and whose version names the bundle).
const TOOLS_PACKAGE: &str = "tern-tools";

/// Packages whose binaries a bundle may ship: `tern` lives in tern-tools,
/// `tern-quantize` in tern-quant.
const BIN_PACKAGES: &[&str] = &[TOOLS_PACKAGE, "tern-quant"];

/// Why a bundle could not be built. Every variant displays as one line.
#[derive(Debug)]
pub enum Error {
    /// The profile name is not in the table.
    UnknownProfile(UnknownProfile),
    /// A GPU profile needs a feature the workspace does not have yet.
    FeatureMissing {
        /// The profile asked for.
        profile: String,
        /// The feature, as cargo spells it (`tern-runtime/cuda`).
        feature: String,
    },
    /// A program the build needs is not installed.
    MissingTool {
        /// The program's name.
        tool: String,
        /// What it is for and how to get it.
        hint: String,
    },
    /// The Rust standard library for the profile's triple is not installed.
    MissingRustTarget(String),
    /// A command ran but failed.
    CommandFailed {
        /// The command, shortened for the message.
        what: String,
        /// Its exit status or last line of error output.
        detail: String,
    },
    /// The workspace does not look as expected (cargo metadata).
    Workspace(String),
    /// Reading or writing a file failed.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownProfile(e) => e.fmt(f),
            Error::FeatureMissing { profile, feature } if feature.ends_with("/cuda") => write!(
                f,
                "profile {profile} needs the `{feature}` feature, but the cuda feature is not \
                 implemented yet (issue 5); rerun with --cpu-only to bundle a CPU-only build \
                 tuned for this device"
            ),
            Error::FeatureMissing { profile, feature } => write!(
                f,
                "profile {profile} needs the `{feature}` feature, which this workspace does not have"
            ),
            Error::MissingTool { tool, hint } => write!(f, "{tool} not found on PATH ({hint})"),
            Error::MissingRustTarget(t) => write!(
                f,
                "the Rust standard library for {t} is not installed (run: rustup target add {t})"
            ),
            Error::CommandFailed { what, detail } => write!(f, "{what} failed: {detail}"),
            Error::Workspace(m) => write!(f, "unexpected workspace: {m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {}

impl From<UnknownProfile> for Error {
    fn from(e: UnknownProfile) -> Self {
        Error::UnknownProfile(e)
    }
}

/// What the build needs to know about the workspace, from `cargo metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The workspace root (holds README.md; `dist/` goes here).
    pub root: PathBuf,
    /// Cargo's target directory.
    pub target_dir: PathBuf,
    /// The version of the tools package.
    pub version: String,
    /// Every package with its declared feature names.
    pub features: Vec<(String, Vec<String>)>,
    /// The binary targets of the packages in `BIN_PACKAGES`, as (binary,
    /// package).
    pub tool_binaries: Vec<(String, String)>,
}

impl Workspace {
    /// Reads the fields from `cargo metadata --format-version 1` output.
    pub fn from_metadata(json: &str) -> Result<Workspace, Error> {
        let v: Value = serde_json::from_str(json)
            .map_err(|e| Error::Workspace(format!("cargo metadata output: {e}")))?;
        let path = |key: &str| {
            v[key]
                .as_str()
                .map(PathBuf::from)
                .ok_or_else(|| Error::Workspace(format!("cargo metadata lacks {key}")))
        };
        let (root, target_dir) = (path("workspace_root")?, path("target_directory")?);
        let packages = v["packages"]
            .as_array()
            .ok_or_else(|| Error::Workspace("cargo metadata lacks packages".into()))?;
        let mut features = Vec::new();
        let mut tools = None;
        let mut tool_binaries = Vec::new();
        for p in packages {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let names = p["features"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            if name == TOOLS_PACKAGE {
                tools = Some(p);
            }
            if BIN_PACKAGES.contains(&name.as_str()) {
                tool_binaries.extend(
                    p["targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|t| {
                            t["kind"]
                                .as_array()
                                .is_some_and(|k| k.iter().any(|k| k == "bin"))
                        })
                        .filter_map(|t| t["name"].as_str())
                        .map(|b| (b.to_string(), name.clone())),
                );
            }
            features.push((name, names));
        }
        let tools = tools.ok_or_else(|| Error::Workspace(format!("no package {TOOLS_PACKAGE}")))?;
        Ok(Workspace {
            root,
            target_dir,
            version: tools["version"].as_str().unwrap_or("unknown").to_string(),
            features,
            tool_binaries,
        })
    }

    /// Whether `feature` (`pkg/feat` or a tools feature) is declared.
    pub fn has_feature(&self, feature: &str) -> bool {
        let (pkg, feat) = feature.split_once('/').unwrap_or((TOOLS_PACKAGE, feature));
        self.features
            .iter()
            .any(|(p, fs)| p == pkg && fs.iter().any(|f| f == feat))
    }
}

/// A decided build: what to pass to cargo and what to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The profile.
    pub profile: &'static Profile,
    /// Features passed to cargo.
    pub features: Vec<String>,
    /// Whether the CUDA backend is built in.
    pub cuda_included: bool,
    /// The release binaries that exist in the workspace, in ship order.
    pub binaries: Vec<String>,
    /// The packages that own them, each once, in order.
    pub packages: Vec<String>,
}

impl Plan {
    /// The arguments after `cargo`.
    pub fn cargo_args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["build", "--release", "--locked"].map(String::from).into();
        for p in &self.packages {
            a.extend(["-p".into(), p.clone()]);
        }
        a.extend(["--target".into(), self.profile.triple.into()]);
        for b in &self.binaries {
            a.extend(["--bin".into(), b.clone()]);
        }
        if !self.features.is_empty() {
            a.extend(["--features".into(), self.features.join(",")]);
        }
        a
    }

    /// `CARGO_ENCODED_RUSTFLAGS` for the build: the profile's target-cpu,
    /// then any flags the caller's `RUSTFLAGS` held (that variable would
    /// otherwise be ignored in favour of the encoded one).
    pub fn encoded_rustflags(&self, extra: &[String]) -> String {
        let mut flags = vec![format!("-Ctarget-cpu={}", self.profile.target_cpu)];
        flags.extend(extra.iter().cloned());
        flags.join("\x1f")
    }
}

/// Decides the build for `profile`. A feature the workspace lacks is an
/// error unless `cpu_only` is set and the feature is the CUDA one, in which
/// case the bundle is built without it (and BUILD-INFO says so).
pub fn plan(profile: &'static Profile, ws: &Workspace, cpu_only: bool) -> Result<Plan, Error> {
    let mut features = Vec::new();
    let mut cuda_included = false;
    for &f in profile.features {
        let is_cuda = f == crate::profiles::CUDA_FEATURE;
        if is_cuda && cpu_only {
            continue;
        }
        if !ws.has_feature(f) {
            return Err(Error::FeatureMissing {
                profile: profile.name.into(),
                feature: f.into(),
            });
        }
        cuda_included |= is_cuda;
        features.push(f.to_string());
    }
    let mut binaries = Vec::new();
    let mut packages: Vec<String> = Vec::new();
    for b in RELEASE_BINARIES {
        if let Some((_, pkg)) = ws.tool_binaries.iter().find(|(t, _)| t == b) {
            binaries.push(b.to_string());
            if !packages.contains(pkg) {
                packages.push(pkg.clone());
            }
        }
    }
    if binaries.is_empty() {
        return Err(Error::Workspace(format!(
            "the workspace has none of the binaries {RELEASE_BINARIES:?}"
        )));
    }
    Ok(Plan {
        profile,
        features,
        cuda_included,
        binaries,
        packages,
    })
}

/// `CARGO_TARGET_<TRIPLE>_LINKER`, the variable cargo reads for a triple's
/// linker.
pub fn linker_var(triple: &str) -> String {
    format!(
        "CARGO_TARGET_{}_LINKER",
        triple.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// What a finished bundle consists of.
#[derive(Debug)]
pub struct Bundle {
    /// `dist/<profile>/`.
    pub dir: PathBuf,
    /// `dist/<profile>.tar.gz`.
    pub archive: PathBuf,
    /// The BUILD-INFO text.
    pub build_info: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `cmd` and returns its stdout; failure to start names `hint`.
fn output(cmd: &mut Command, hint: &str) -> Result<String, Error> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.stderr(Stdio::piped()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingTool {
                tool: prog.clone(),
                hint: hint.into(),
            }
        } else {
            Error::CommandFailed {
                what: prog.clone(),
                detail: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty());
        return Err(Error::CommandFailed {
            what: prog,
            detail: last.unwrap_or("no output").trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `prog` can be run: a path that exists, or a name found on PATH.
fn on_path(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
}

fn env_program(var: &str, default: &str) -> OsString {
    std::env::var_os(var).unwrap_or_else(|| default.into())
}

/// Builds the bundle for `profile` in the workspace around the current
/// directory. Cargo's own progress goes to stderr as it runs.
pub fn build(profile: &'static Profile, cpu_only: bool) -> Result<Bundle, Error> {
    let cargo = env_program("CARGO", "cargo");
    let rustc = env_program("RUSTC", "rustc");
    let rust_hint = "install Rust with rustup: https://rustup.rs";

    let meta = output(
        Command::new(&cargo).args(["metadata", "--no-deps", "--format-version", "1"]),
        rust_hint,
    )?;
    let ws = Workspace::from_metadata(&meta)?;
    let plan = plan(profile, &ws, cpu_only)?;

    // The toolchain: the target's standard library, the linker, tar.
    let rustc_v = output(Command::new(&rustc).arg("-vV"), rust_hint)?;
    let host = rustc_v
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or("")
        .to_string();
    let rustc_version = rustc_v.lines().next().unwrap_or("rustc").trim().to_string();
    let libdir = output(
        Command::new(&rustc).args(["--print", "target-libdir", "--target", profile.triple]),
        rust_hint,
    )?;
    let has_std = std::fs::read_dir(libdir.trim()).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    });
    if !has_std {
        return Err(Error::MissingRustTarget(profile.triple.into()));
    }
    let linker_var = linker_var(profile.triple);
    let linker = match std::env::var(&linker_var) {
        Ok(l) if !l.is_empty() => Some(l),
        _ => profile.linker.map(str::to_string),
    };
    match &linker {
        Some(l) if !on_path(l) => {
            return Err(Error::MissingTool {
                tool: l.clone(),
                hint: format!("the linker for {}; {}", profile.triple, profile.linker_hint),
            })
        }
        None if host != profile.triple => {
            return Err(Error::MissingTool {
                tool: format!("a linker for {}", profile.triple),
                hint: format!("this host is {host}; set {linker_var} to a cross linker"),
            })
        }
        _ => {}
    }
    if !on_path("tar") {
        return Err(Error::MissingTool {
            tool: "tar".into(),
            hint: "needed to pack the .tar.gz".into(),
        });
    }

    // The build.
    let extra: Vec<String> = std::env::var("RUSTFLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut cmd = Command::new(&cargo);
    cmd.args(plan.cargo_args())
        .current_dir(&ws.root)
        .env("CARGO_ENCODED_RUSTFLAGS", plan.encoded_rustflags(&extra))
        .env_remove("RUSTFLAGS");
    if let Some(l) = &linker {
        cmd.env(&linker_var, l);
    }
    if plan.cuda_included {
        if let Some(arch) = profile.cuda_arch_name() {
            cmd.env("TERN_CUDA_ARCH", arch);
        }
    }
    eprintln!(
        "tern-bundle: {} → cargo {}",
        profile.name,
        plan.cargo_args().join(" ")
    );
    let status = cmd.status().map_err(|e| Error::CommandFailed {
        what: "cargo build".into(),
        detail: e.to_string(),
    })?;
    if !status.success() {
        return Err(Error::CommandFailed {
            what: "cargo build".into(),
            detail: format!("{status} (see cargo's messages above)"),
        });
    }

    // The bundle folder.
    let dist = ws.root.join("dist");
    let dir = dist.join(profile.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let built = ws.target_dir.join(profile.triple).join("release");
    let mut binaries = Vec::new();
    let mut min_glibc = None;
    for b in &plan.binaries {
        let from = built.join(b);
        let to = dir.join(b);
        let size = std::fs::copy(&from, &to).map_err(io(&from))?;
        binaries.push((b.clone(), size));
        if let Ok(text) = output(Command::new("readelf").args(["-V", "--wide"]).arg(&to), "") {
            min_glibc = min_glibc.max(max_glibc(&text));
        }
    }
    let readme = ws.root.join("README.md");
    std::fs::copy(&readme, dir.join("README.md")).map_err(io(&readme))?;

    let info = BuildInfo {
        profile,
        version: ws.version.clone(),
        commit: git_commit(&ws.root),
        rustc: rustc_version,
        date: utc_timestamp(build_time()),
        features: plan.features.clone(),
        cuda_included: plan.cuda_included,
        extra_rustflags: extra,
        linker,
        binaries,
        min_glibc,
    };
    let build_info = info.render();
    let info_path = dir.join("BUILD-INFO");
    std::fs::write(&info_path, &build_info).map_err(io(&info_path))?;

    // The archive, written beside and renamed so a half-written one never
    // carries the final name.
    let archive = dist.join(format!("{}.tar.gz", profile.name));
    let partial = dist.join(format!(".{}.tar.gz.part", profile.name));
    output(
        Command::new("tar")
            .arg("-czf")
            .arg(&partial)
            .arg("-C")
            .arg(&dist)
            .arg(profile.name),
        "",
    )?;
    std::fs::rename(&partial, &archive).map_err(io(&archive))?;
    Ok(Bundle {
        dir,
        archive,
        build_info,
    })
}

/// `SOURCE_DATE_EPOCH` when set (reproducible builds), else now.
fn build_time() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
}

/// The commit the bundle was built from, `-dirty` when tracked files
/// differ from it, or `unknown` outside a git checkout.
fn git_commit(root: &Path) -> String {
    let git = |args: &[&str]| output(Command::new("git").arg("-C").arg(root).args(args), "");
    match git(&["rev-parse", "HEAD"]) {
        Ok(head) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .map(|s| !s.trim().is_empty())
                .unwrap_or(false);
            format!("{}{}", head.trim(), if dirty { "-dirty" } else { "" })
        }
        Err(_) => "unknown (not a git checkout)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::find;

    fn ws(runtime_features: &[&str], bins: &[&str]) -> Workspace {
        Workspace {
            root: "/repo".into(),
            target_dir: "/repo/target".into(),
            version: "0.1.0".into(),
            features: vec![
                (
                    "tern-runtime".into(),
                    runtime_features.iter().map(|s| s.to_string()).collect(),
                ),
                (TOOLS_PACKAGE.into(), vec![]),
            ],
            tool_binaries: bins
                .iter()
                .map(|s| (s.to_string(), TOOLS_PACKAGE.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_gpu_profile_without_the_cuda_feature_fails_clearly() {
        let err = plan(find("jetson-orin").unwrap(), &ws(&[], &["tern"]), false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("the cuda feature is not implemented yet"),
            "{msg}"
        );
        assert!(msg.contains("--cpu-only"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn cpu_only_builds_a_gpu_profile_without_cuda() {
        let p = plan(find("rtx4090").unwrap(), &ws(&[], &["tern"]), true).unwrap();
        assert!(!p.cuda_included);
        assert!(p.features.is_empty());
        assert!(!p.cargo_args().contains(&"--features".to_string()));
    }

    #[test]
    fn once_the_cuda_feature_exists_it_is_used() {
        let p = plan(find("hopper").unwrap(), &ws(&["cuda"], &["tern"]), false).unwrap();
        assert!(p.cuda_included);
        let args = p.cargo_args();
        let i = args.iter().position(|a| a == "--features").unwrap();
        assert_eq!(args[i + 1], "tern-runtime/cuda");
    }

    #[test]
    fn tern_quantize_ships_once_it_exists() {
        let cpu = find("cpu-aarch64").unwrap();
        let now = plan(cpu, &ws(&[], &["tern"]), false).unwrap();
        assert_eq!(now.binaries, ["tern"]);
        let mut w = ws(&[], &["tern", "dev-tool"]);
        w.tool_binaries
            .push(("tern-quantize".into(), "tern-quant".into()));
        let later = plan(cpu, &w, false).unwrap();
        assert_eq!(later.binaries, ["tern", "tern-quantize"]);
        let args = later.cargo_args();
        assert_eq!(
            args,
            [
                "build",
                "--release",
                "--locked",
                "-p",
                "tern-tools",
                "-p",
                "tern-quant",
                "--target",
                "aarch64-unknown-linux-gnu",
                "--bin",
                "tern",
                "--bin",
                "tern-quantize"
            ]
        );
        assert!(plan(cpu, &ws(&[], &["other"]), false).is_err());
    }

    #[test]
    fn rustflags_carry_the_target_cpu_first() {
        let p = plan(find("jetson-orin").unwrap(), &ws(&[], &["tern"]), true).unwrap();
        assert_eq!(p.encoded_rustflags(&[]), "-Ctarget-cpu=cortex-a78ae");
        assert_eq!(
            p.encoded_rustflags(&["-g".into()]),
            "-Ctarget-cpu=cortex-a78ae\x1f-g"
        );
    }

    #[test]
    fn linker_variables_follow_cargos_spelling() {
        assert_eq!(
            linker_var("aarch64-unknown-linux-gnu"),
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"
        );
    }

    #[test]
    fn metadata_is_read() {
        let json = r#"{"workspace_root":"/r","target_directory":"/r/target","packages":[
            {"name":"tern-runtime","version":"0.1.0","features":{"cuda":[]},"targets":[]},
            {"name":"tern-tools","version":"0.2.0","features":{},"targets":[
                {"name":"tern","kind":["bin"]},{"name":"tern_tools","kind":["lib"]}]}]}"#;
        let w = Workspace::from_metadata(json).unwrap();
        assert_eq!(w.root, PathBuf::from("/r"));
        assert_eq!(w.version, "0.2.0");
        assert_eq!(
            w.tool_binaries,
            [("tern".to_string(), "tern-tools".to_string())]
        );
        assert!(w.has_feature("tern-runtime/cuda"));
        assert!(!w.has_feature("tern-runtime/metal"));
        assert!(Workspace::from_metadata("not json").is_err());
        assert!(Workspace::from_metadata(r#"{"workspace_root":"/r"}"#).is_err());
    }
}
