//! Embeds the LearnFlow migrations (`migrations/*.sql`) into the binary, so
//! `kubectl pg migrate up` works from any directory.

use std::{env, fs, path::Path};

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
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
