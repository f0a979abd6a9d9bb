//! The committed IDL (`contracts/idl/dgpu_escrow.json`) must be the program's IDL.
//!
//! The IDL is generated as `anchor idl build` does: anchor-lang-idl's `IdlBuilder` runs the
//! program's `__anchor_private_print_idl*` tests (`cargo test --features idl-build`) and
//! assembles what they print. `contracts/scripts/gen_idl.sh` writes the file through this same
//! test (`DGPU_WRITE_IDL=1`), so the check and the generator cannot drift apart.
//!
//! The nested cargo runs in a child process (this test binary again, `idl_child`) whose
//! environment is the one the outer cargo had: the variables cargo sets for a test process
//! (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...) would make build scripts that watch them (ring's)
//! look dirty and rebuild the whole dependency tree, and IdlBuilder's `RUSTFLAGS` would too.

use anchor_lang_idl::build::IdlBuilder;
use std::path::{Path, PathBuf};
use std::process::Command;

const BEGIN: &str = "----- dgpu_escrow IDL begin -----";
const END: &str = "----- dgpu_escrow IDL end -----";

/// Read at run time, not baked in by `env!`: a build cache shared by clones at other paths
/// (CI) can run a test binary compiled in a checkout that no longer exists.
fn program_dir() -> PathBuf {
    std::env::var_os(PROGRAM_DIR_VAR)
        .or_else(|| std::env::var_os("CARGO_MANIFEST_DIR"))
        .map(PathBuf::from)
        .expect("cargo sets CARGO_MANIFEST_DIR for a test run")
}

/// How the parent hands the program's folder to the child, whose CARGO_* variables are removed.
const PROGRAM_DIR_VAR: &str = "DGPU_ESCROW_PROGRAM_DIR";

fn idl_path() -> PathBuf {
    program_dir().join("../../idl/dgpu_escrow.json")
}

/// Variables cargo sets for the test process that the outer cargo did not see.
fn set_by_cargo_for_tests(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
        // anchor-lang-idl 0.1.4 would pass `+{toolchain}` to cargo literally if this is set;
        // the toolchain is pinned through PATH below instead.
        "RUSTUP_TOOLCHAIN",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// Generates the IDL in a child process with a clean environment; pretty JSON plus newline.
fn generate_idl() -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", "idl::idl_child", "--ignored", "--nocapture", "--test-threads=1"]);
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if set_by_cargo_for_tests(name) {
                cmd.env_remove(name);
            }
        }
    }
    // The same cargo/rustc as this run: the toolchain's bin directory first on PATH.
    if let Some(bin) = std::env::var_os("CARGO").as_deref().map(Path::new).and_then(Path::parent) {
        let mut paths = vec![bin.to_path_buf()];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        cmd.env("PATH", std::env::join_paths(paths).expect("PATH"));
    }
    // IdlBuilder sets RUSTFLAGS=-A warnings; CARGO_ENCODED_RUSTFLAGS wins over it, so the
    // nested build keeps this run's flags (and its artifacts).
    let encoded = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_else(|_| {
        std::env::var("RUSTFLAGS")
            .map(|f| f.split_whitespace().collect::<Vec<_>>().join("\u{1f}"))
            .unwrap_or_default()
    });
    cmd.env("CARGO_ENCODED_RUSTFLAGS", encoded);
    cmd.env("DGPU_IDL_CHILD", "1");
    cmd.env(PROGRAM_DIR_VAR, program_dir());
    let out = cmd.output().expect("spawn IDL child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "IDL child failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let begin = stdout.find(BEGIN).expect("IDL begin marker") + BEGIN.len();
    let end = stdout.find(END).expect("IDL end marker");
    let mut json = stdout[begin..end].trim().to_string();
    json.push('\n');
    json
}

/// Runs only as the child of `committed_idl_matches_the_program`.
#[test]
#[ignore = "run by committed_idl_matches_the_program in a clean environment"]
fn idl_child() {
    if std::env::var_os("DGPU_IDL_CHILD").is_none() {
        // e.g. `cargo test -- --include-ignored`: the parent test runs this in a clean environment.
        return;
    }
    let idl = IdlBuilder::new()
        .program_path(program_dir())
        .resolution(true)
        .skip_lint(false)
        .no_docs(false)
        .cargo_args(vec!["--lib".into(), "--locked".into()])
        .build()
        .expect("IDL build");
    println!("{BEGIN}\n{}\n{END}", serde_json::to_string_pretty(&idl).expect("IDL json"));
}

#[test]
fn committed_idl_matches_the_program() {
    let idl = generate_idl();
    let path = idl_path();
    if std::env::var_os("DGPU_WRITE_IDL").is_some() {
        std::fs::write(&path, &idl).expect("write IDL");
        println!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == idl,
        "{} does not match the program; run contracts/scripts/gen_idl.sh",
        path.display()
    );
}
