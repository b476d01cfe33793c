//! Embeds the LearnFlow migrations (`migrations/*.sql`) into the binary, so
//! `kubectl pg migrate up` works from any directory.

use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() {
    stamp_build();
    main_thread_stack();
    let dir = manifest_dir().join("migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = fs::read_dir(&dir)
        .expect("migrations/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    let mut out = String::from("&[\n");
    for name in names {
        let path = dir.join(&name);
        println!("cargo:rerun-if-changed={}", path.display());
        out.push_str(&format!(
            "    ({name:?}, include_bytes!({:?}) as &[u8]),\n",
            path.display().to_string()
        ));
    }
    out.push(']');
    let target = Path::new(&env::var("OUT_DIR").expect("OUT_DIR is set by cargo"))
        .join("embedded_migrations.rs");
    fs::write(target, out).expect("OUT_DIR is writable");
}

/// The commands run on the main thread (a current-thread runtime), whose stack is 8 MiB on
/// Linux and macOS but 1 MiB on Windows, where `install` overflowed it (a debug build under
/// Wine): give Windows' main thread the same 8 MiB.
fn main_thread_stack() {
    const STACK: u32 = 8 << 20;
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("windows") {
        match env::var("CARGO_CFG_TARGET_ENV").as_deref() {
            Ok("msvc") => println!("cargo:rustc-link-arg-bins=/STACK:{STACK}"),
            _ => println!("cargo:rustc-link-arg-bins=-Wl,--stack,{STACK}"),
        }
    }
}

/// Records the git commit and build date for `kubectl pg version` (SOURCE_DATE_EPOCH wins,
/// so release builds are reproducible).
fn stamp_build() {
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let commit =
        run("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let date = match env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => run(
            "date",
            &["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"],
        ),
        Err(_) => run("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    }
    .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KUBECTL_PG_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=KUBECTL_PG_BUILD_DATE={date}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let head = manifest_dir().join(".git/HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed={}", head.display());
    }
}

/// The package's directory as cargo gives it to this run, not as it was when this script was
/// compiled: a target directory shared by clones at other paths reuses the compiled script.
fn manifest_dir() -> PathBuf {
    PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}
