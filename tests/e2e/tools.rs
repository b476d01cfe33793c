//! Third-party tools from their registries (PyPI, npm, Maven Central), installed once per run
//! into the target's temp directory at pinned versions, for the tests that check the plugin's
//! output with the real programs people use.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs one install step in a working directory: Ok, or the tool's last line of complaint.
pub type Step<'a> = dyn Fn(&str, &[&str]) -> Result<(), String> + 'a;

/// `CARGO_TARGET_TMPDIR/NAME`, made by `build` (which runs its steps in the directory it is
/// given) unless an earlier run finished it. Built aside and renamed into place: another test
/// process may be at it too.
pub fn installed(
    name: &str,
    build: impl FnOnce(&Path, &Step) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let done = root.join("ready");
    if done.exists() {
        return Ok(root);
    }
    let work = root.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let run = |program: &str, args: &[&str]| -> Result<(), String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(&work)
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = if said.trim().is_empty() {
                String::from_utf8_lossy(&out.stdout)
            } else {
                said
            };
            Err(format!(
                "{program} {}: {}",
                args.join(" "),
                said.lines().last().unwrap_or("")
            ))
        }
    };
    build(&work, &run)?;
    std::fs::write(work.join("ready"), "").map_err(|e| e.to_string())?;
    if std::fs::rename(&work, &root).is_err() && !done.exists() {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&work, &root).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(root)
}

/// A venv in `dir` with `packages` from PyPI.
pub fn python_venv(run: &Step, packages: &[&str]) -> Result<(), String> {
    run("python3", &["-m", "venv", "venv"])?;
    let mut args = vec![
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--timeout",
        "30",
    ];
    args.extend_from_slice(packages);
    run("venv/bin/pip", &args)
}
