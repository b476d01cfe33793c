//! `.env` files as real parsers read them: python-dotenv from PyPI and node's dotenv from npm,
//! installed once per run into the target's temp directory (pinned versions). Without the
//! registries the tests that need them say so and pass; here the registries are reachable, so
//! they run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kubectl_pg::database::dotenv::{self, Reader};
use serde_json::{Map, Value};

const PYTHON_DOTENV: &str = "python-dotenv==1.2.4";
const NODE_DOTENV: &str = "dotenv@18.0.10";

pub struct Parsers {
    python: PathBuf,
    node_modules: PathBuf,
}

/// The installed parsers, or None (with the reason on stderr) when a registry or the tools to
/// reach it are missing.
pub fn parsers() -> Option<&'static Parsers> {
    static PARSERS: OnceLock<Option<Parsers>> = OnceLock::new();
    PARSERS
        .get_or_init(|| match install() {
            Ok(p) => Some(p),
            Err(why) => {
                eprintln!(
                    "SKIPPED: the dotenv parsers could not be installed ({why}); python-dotenv and node's dotenv were not checked"
                );
                None
            }
        })
        .as_ref()
}

fn install() -> Result<Parsers, String> {
    let root = crate::tools::installed("dotenv-parsers", |_, run| {
        crate::tools::python_venv(run, &[PYTHON_DOTENV])?;
        run(
            "npm",
            &[
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                ".",
                NODE_DOTENV,
            ],
        )
    })?;
    Ok(Parsers {
        python: root.join("venv/bin/python"),
        node_modules: root.join("node_modules"),
    })
}

impl Parsers {
    /// What `reader` makes of the file: its variables and values.
    pub fn read(&self, reader: Reader, file: &Path) -> Map<String, Value> {
        let mut command = match reader {
            Reader::PythonDotenv => {
                let mut c = Command::new(&self.python);
                c.args([
                    "-c",
                    "import json, sys\nfrom dotenv import dotenv_values\nsys.stdout.write(json.dumps(dotenv_values(sys.argv[1])))",
                ]);
                c
            }
            Reader::NodeDotenv => {
                let mut c = Command::new("node");
                c.args([
                    "-e",
                    "const fs = require('fs'); process.stdout.write(JSON.stringify(require('dotenv').parse(fs.readFileSync(process.argv[1]))))",
                ])
                .env("NODE_PATH", &self.node_modules);
                c
            }
            Reader::ComposeEnvFile => panic!("docker compose does not run here"),
        };
        // Interpolation must find nothing of ours in the environment.
        let out = command
            .arg(file)
            .env_remove("HOME")
            .env_remove("PGPASSWORD")
            .env_remove("A")
            .output()
            .expect("the parser runs");
        assert!(out.status.success(), "{reader}: {out:?}");
        match serde_json::from_slice(&out.stdout) {
            Ok(Value::Object(map)) => map,
            other => panic!("{reader}: {other:?}"),
        }
    }
}

/// Passwords with everything a .env file finds awkward (no control characters: install
/// refuses them).
fn random_passwords(count: usize) -> Vec<String> {
    use rand::Rng;
    const PIECES: &[&str] = &[
        "'", "\"", "\\", "\\\\", "#", " #", " ", "$", "$A", "${A}", "`", "=", "\\n", "é", "✓",
        "日本", "\u{a0}", "@", ":", "/", "?", "%", "&", "!", "*", "~", "{", "}",
    ];
    const PLAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..count)
        .map(|_| {
            let pieces = rng.random_range(1..10);
            (0..pieces)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        PIECES[rng.random_range(0..PIECES.len())].to_string()
                    } else {
                        let n = rng.random_range(1..4);
                        (0..n)
                            .map(|_| PLAIN[rng.random_range(0..PLAIN.len())] as char)
                            .collect()
                    }
                })
                .collect::<String>()
        })
        .collect()
}

/// Every value `dsn --format dotenv` writes is read back exactly by the real python-dotenv and
/// node dotenv wherever the writer claims so, and the passwords the issue names (quotes, `#`,
/// spaces, `$`, backslashes, UTF-8) by all three.
#[test]
fn dotenv_values_read_back_by_python_and_node() {
    let Some(parsers) = parsers() else { return };
    let named = [
        "p@ss:w/rd 'quoted' & more%",
        "it's #1 & 100%",
        "cost: $HOME and {A} #1",
        "say \"hi\" # not a comment",
        "back\\slash and \\n and $x",
        "spaces  inside and ünïcødé ✓ 日本",
        "a'b\"c",
        "trailing\\",
    ];
    let mut values: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    values.extend(random_passwords(600));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(".env");
    // A value no form carries safely is refused (tested beside the writer), not written.
    values.retain(|v| dotenv::write(v).is_some());
    let written: Vec<_> = values.iter().map(|v| dotenv::write(v).unwrap()).collect();
    let text: String = written
        .iter()
        .enumerate()
        .map(|(i, w)| format!("V{i}={}\n", w.text))
        .collect();
    std::fs::write(&file, &text).unwrap();
    let mut compromises = 0;
    for reader in [Reader::PythonDotenv, Reader::NodeDotenv] {
        let read = parsers.read(reader, &file);
        // Every line stands alone: no form spills into the next line.
        assert_eq!(read.len(), values.len(), "{reader} read every variable");
        for (i, (value, w)) in values.iter().zip(&written).enumerate() {
            if w.exact_for.contains(&reader) {
                assert_eq!(
                    read.get(&format!("V{i}")).and_then(Value::as_str),
                    Some(value.as_str()),
                    "{reader} reads {:?} written as {}",
                    value,
                    w.text
                );
            }
        }
    }
    for (value, w) in values.iter().zip(&written) {
        if w.exact_for.len() < dotenv::READERS.len() {
            compromises += 1;
        }
        if named.contains(&value.as_str()) {
            assert_eq!(w.exact_for, dotenv::READERS, "{value:?} as {}", w.text);
        }
    }
    eprintln!(
        "{} values, {compromises} written for fewer than all three readers",
        values.len()
    );
}
