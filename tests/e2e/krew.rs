//! Krew packaging: `krew/package` and `krew/render` turn built binaries into
//! archives and a manifest that krew accepts.
//!
//! The scripts are what the release workflow runs, so they are exercised as is
//! (through `python3`), on fake binaries: what matters here is the archive
//! layout, the manifest structure and that each checksum belongs to its
//! archive, not what the binary does. Tests that only need render's view of a
//! distribution directory write placeholder files instead of packaging, and
//! independent script runs are started together, which keeps the module's
//! wall time to a few interpreter starts.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest, Sha256};

const VERSION: &str = "v0.1.0";
/// Stands in for the GitHub download URL, so nothing points at a real release.
const BASE_URL: &str = "https://downloads.example.invalid/kubectl-pg/v0.1.0";

/// Every platform the manifest must offer, as krew's os/arch selector labels.
const PLATFORMS: [(&str, &str); 5] = [
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("darwin", "amd64"),
    ("darwin", "arm64"),
    ("windows", "amd64"),
];

/// Every object kind kubectl-pg touches; the caveats must tell users about
/// each, since krew shows them at install time and RBAC failures are the
/// first thing a new user hits.
const RBAC_RESOURCES: [&str; 14] = [
    "statefulsets",
    "services",
    "secrets",
    "persistentvolumeclaims",
    "pods",
    "pods/portforward",
    "pods/exec",
    "events",
    "storageclasses",
    "resourcequotas",
    "selfsubjectaccessreviews",
    "namespaces",
    "deployments",
    "leases",
];

fn krew_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("krew")
        .join(name)
}

/// The interpreter behind `python3`, resolved once per test binary: a
/// version-manager shim (pyenv, asdf) in front of it costs more per start than
/// the scripts' own work.
fn python3() -> &'static Path {
    static INTERPRETER: OnceLock<PathBuf> = OnceLock::new();
    INTERPRETER.get_or_init(|| {
        let out = match Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "python3 was not found on PATH; the krew packaging scripts (krew/package, \
                 krew/render) are Python 3 and these tests need it to run them"
            ),
            Err(e) => panic!("could not start python3: {e}"),
        };
        expect_success(&out, "python3");
        match String::from_utf8_lossy(&out.stdout).trim() {
            "" => PathBuf::from("python3"),
            path => PathBuf::from(path),
        }
    })
}

/// Starts python3 without waiting, so independent runs can overlap.
fn spawn_python3<I, S>(args: I) -> Child
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(python3())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {}: {e}", python3().display()))
}

fn finish(child: Child) -> Output {
    child.wait_with_output().expect("waiting for python3")
}

fn expect_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

fn expect_failure(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what} should have failed but exited 0; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout),
    );
    assert!(
        !stderr.trim().is_empty(),
        "{what} failed without saying why"
    );
    stderr
}

fn archive_name(version: &str, os: &str, arch: &str) -> String {
    let ext = if os == "windows" { "zip" } else { "tar.gz" };
    format!("kubectl-pg_{version}_{os}_{arch}.{ext}")
}

fn bin_name(os: &str) -> &'static str {
    if os == "windows" {
        "kubectl-pg.exe"
    } else {
        "kubectl-pg"
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Semantic version tag as krew-index wants it: `v` + MAJOR.MINOR.PATCH, no
/// leading zeros, optional `-PRERELEASE` of dot-separated identifiers.
/// Written out by hand on purpose: it is the independent check of what the
/// scripts accept.
fn is_semver_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix('v') else {
        return false;
    };
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return false;
    }
    pre.is_none_or(|pre| {
        pre.split('.').all(|id| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && (!id.bytes().all(|b| b.is_ascii_digit()) || numeric(id))
        })
    })
}

/// Packages a distinct fake binary for every platform into `dir/dist`.
/// Distinct contents mean distinct checksums, so a manifest that paired one
/// platform's URI with another's sha256 would not go unnoticed.
fn package_all(dir: &Path, version: &str) -> PathBuf {
    let dist = dir.join("dist");
    let license = dir.join("LICENSE");
    fs::write(&license, "Apache License, Version 2.0 (test copy)\n").unwrap();
    let children: Vec<Child> = PLATFORMS
        .iter()
        .map(|(os, arch)| {
            let binary = dir.join(format!("kubectl-pg-{os}-{arch}"));
            fs::write(
                &binary,
                format!("fake kubectl-pg for {os}/{arch}\n").repeat(32),
            )
            .unwrap();
            spawn_python3([
                krew_script("package").as_os_str(),
                "--version".as_ref(),
                version.as_ref(),
                "--os".as_ref(),
                os.as_ref(),
                "--arch".as_ref(),
                arch.as_ref(),
                "--binary".as_ref(),
                binary.as_os_str(),
                "--license".as_ref(),
                license.as_os_str(),
                "--out".as_ref(),
                dist.as_os_str(),
            ])
        })
        .collect();
    for ((os, arch), child) in PLATFORMS.into_iter().zip(children) {
        let out = finish(child);
        expect_success(&out, &format!("krew/package for {os}/{arch}"));
        let printed = String::from_utf8_lossy(&out.stdout);
        let expected = dist.join(archive_name(version, os, arch));
        assert_eq!(
            Path::new(printed.trim()),
            expected,
            "krew/package should print the archive it wrote"
        );
        assert!(expected.is_file(), "{} was not written", expected.display());
    }
    dist
}

/// A distribution directory holding placeholder archives for `platforms`:
/// render only hashes archives, it never opens them.
fn placeholder_dist(dir: &Path, version: &str, platforms: &[(&str, &str)]) -> PathBuf {
    let dist = dir.join("dist");
    fs::create_dir_all(&dist).unwrap();
    for (os, arch) in platforms {
        fs::write(
            dist.join(archive_name(version, os, arch)),
            format!("{os}/{arch}"),
        )
        .unwrap();
    }
    dist
}

fn spawn_render(dist: &Path, version: &str) -> Child {
    spawn_python3([
        krew_script("render").as_os_str(),
        "--version".as_ref(),
        version.as_ref(),
        "--dist".as_ref(),
        dist.as_os_str(),
        "--base-url".as_ref(),
        BASE_URL.as_ref(),
    ])
}

/// Starts listing member name -> permission bits of each archive, read by
/// Python's tarfile and zipfile so the test needs neither `tar` nor `unzip`.
fn spawn_archive_listing(archives: &[PathBuf]) -> Child {
    const LIST: &str = r#"
import json, sys, tarfile, zipfile
out = {}
for path in sys.argv[1:]:
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            out[path] = {i.filename: (i.external_attr >> 16) & 0o7777 for i in z.infolist()}
    else:
        with tarfile.open(path, "r:gz") as t:
            out[path] = {m.name: m.mode for m in t.getmembers() if m.isfile()}
print(json.dumps(out))
"#;
    let mut args: Vec<&OsStr> = vec!["-c".as_ref(), LIST.as_ref()];
    args.extend(archives.iter().map(|p| p.as_os_str()));
    spawn_python3(args)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("manifest has no string at {pointer}: {v:#}"))
}

#[test]
fn semver_tag_check_agrees_with_the_spec() {
    for ok in [
        "v0.1.0",
        "v1.22.333",
        "v0.2.0-rc.1",
        "v1.0.0-alpha",
        "v1.0.0-0.3.7",
        "v1.0.0-x-y.z",
    ] {
        assert!(is_semver_tag(ok), "{ok} is a semver tag");
    }
    for bad in [
        "0.1.0",
        "v0.1",
        "v0.1.0.1",
        "v01.0.0",
        "v0.01.0",
        "v0.1.0-",
        "v0.1.0-rc..1",
        "v0.1.0-01",
        "v0.1.0+build",
        "V0.1.0",
        "latest",
        "",
    ] {
        assert!(!is_semver_tag(bad), "{bad:?} is not a semver tag");
    }
}

#[test]
fn package_and_render_produce_a_valid_krew_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = package_all(tmp.path(), VERSION);
    let archives: Vec<PathBuf> = PLATFORMS
        .iter()
        .map(|(os, arch)| dist.join(archive_name(VERSION, os, arch)))
        .collect();
    let render = spawn_render(&dist, VERSION);
    let listing = spawn_archive_listing(&archives);

    let out = finish(render);
    expect_success(&out, "krew/render");
    let text = String::from_utf8(out.stdout).expect("manifest is UTF-8");
    assert!(
        !text.contains("{{"),
        "template placeholders left in the manifest:\n{text}"
    );
    let doc: Value = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("rendered manifest is not valid YAML: {e}\n{text}"));

    assert_eq!(
        str_at(&doc, "/apiVersion"),
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(str_at(&doc, "/kind"), "Plugin");
    assert_eq!(str_at(&doc, "/metadata/name"), "pg");
    let version = str_at(&doc, "/spec/version");
    assert_eq!(version, VERSION);
    assert!(
        is_semver_tag(version),
        "spec.version {version:?} is not a semver tag"
    );
    assert_eq!(
        str_at(&doc, "/spec/homepage"),
        "https://github.com/kubectl-pg/kubectl-pg"
    );
    let short = str_at(&doc, "/spec/shortDescription");
    assert!(
        !short.is_empty() && !short.contains('\n'),
        "krew wants a one-line shortDescription"
    );
    assert!(!str_at(&doc, "/spec/description").trim().is_empty());
    let caveats = str_at(&doc, "/spec/caveats");
    for resource in RBAC_RESOURCES {
        assert!(
            caveats.contains(resource),
            "caveats do not mention RBAC for {resource}"
        );
    }

    let platforms = doc
        .pointer("/spec/platforms")
        .and_then(Value::as_array)
        .expect("spec.platforms is a list");
    let out = finish(listing);
    expect_success(&out, "listing the archives");
    let members: BTreeMap<String, BTreeMap<String, u32>> =
        serde_json::from_slice(&out.stdout).expect("archive listing is JSON");

    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for platform in platforms {
        let os = str_at(platform, "/selector/matchLabels/os");
        let arch = str_at(platform, "/selector/matchLabels/arch");
        *seen.entry((os.to_owned(), arch.to_owned())).or_default() += 1;
        let name = archive_name(VERSION, os, arch);
        let archive = dist.join(&name);

        assert_eq!(
            str_at(platform, "/uri"),
            format!("{BASE_URL}/{name}"),
            "uri of {os}/{arch}"
        );

        let sha = str_at(platform, "/sha256");
        let bytes = fs::read(&archive).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
        assert_eq!(
            sha,
            sha256_hex(&bytes),
            "sha256 of {os}/{arch} is not the sha256 of {name}"
        );

        let bin = str_at(platform, "/bin");
        assert_eq!(bin, bin_name(os), "bin of {os}/{arch}");
        let listing = members
            .get(archive.to_str().unwrap())
            .unwrap_or_else(|| panic!("{os}/{arch} is not a platform that was packaged"));
        assert_eq!(
            listing.get(bin),
            Some(&0o755),
            "{name} should hold {bin} at its root with mode 0755; it holds {listing:?}"
        );
        assert!(
            listing.contains_key("LICENSE"),
            "{name} has no LICENSE: {listing:?}"
        );
        // krew fails the install when a `files` entry matches nothing.
        for from in platform["files"].as_array().into_iter().flatten() {
            let from = from["from"].as_str().expect("files[].from is a string");
            assert!(
                listing.contains_key(from),
                "files entry {from:?} is not in {name}: {listing:?}"
            );
        }
    }
    let expected: BTreeMap<(String, String), usize> = PLATFORMS
        .iter()
        .map(|(os, arch)| ((os.to_string(), arch.to_string()), 1))
        .collect();
    assert_eq!(seen, expected, "each os/arch pair must appear exactly once");
}

#[test]
fn render_fails_when_an_archive_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let without_windows: Vec<_> = PLATFORMS
        .iter()
        .copied()
        .filter(|(os, _)| *os != "windows")
        .collect();
    let dist = placeholder_dist(tmp.path(), VERSION, &without_windows);

    let out = finish(spawn_render(&dist, VERSION));
    let stderr = expect_failure(&out, "krew/render without the windows archive");
    let missing = archive_name(VERSION, "windows", "amd64");
    assert!(
        stderr.contains(&missing),
        "the error should name {missing}: {stderr}"
    );
}

/// `--partial` (krew/dist on a machine that cannot build every platform) leaves out the
/// platforms whose archive is missing, names them, and keeps the others whole; with no archive
/// at all it still fails.
#[test]
fn render_partial_leaves_out_missing_platforms() {
    let tmp = tempfile::tempdir().unwrap();
    let built: Vec<_> = PLATFORMS
        .iter()
        .copied()
        .filter(|(os, _)| *os != "darwin")
        .collect();
    let dist = placeholder_dist(&tmp.path().join("some"), VERSION, &built);
    let partial = |dist: &Path| {
        spawn_python3([
            krew_script("render").as_os_str(),
            "--version".as_ref(),
            VERSION.as_ref(),
            "--dist".as_ref(),
            dist.as_os_str(),
            "--partial".as_ref(),
        ])
    };
    let some = partial(&dist);
    let empty = tmp.path().join("none");
    fs::create_dir_all(&empty).unwrap();
    let none = partial(&empty);

    let out = finish(some);
    expect_success(&out, "krew/render --partial");
    let doc: Value = serde_saphyr::from_str(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    let platforms = doc["spec"]["platforms"].as_array().unwrap();
    let listed: Vec<(&str, &str)> = platforms
        .iter()
        .map(|p| {
            (
                str_at(p, "/selector/matchLabels/os"),
                str_at(p, "/selector/matchLabels/arch"),
            )
        })
        .collect();
    assert_eq!(listed, built);
    for platform in platforms {
        assert!(platform["bin"].is_string() && platform["files"].is_array());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    for arch in ["amd64", "arm64"] {
        let name = archive_name(VERSION, "darwin", arch);
        assert!(said.contains(&name), "{said}");
    }

    let out = finish(none);
    expect_failure(&out, "krew/render --partial without any archive");
}

#[test]
fn render_accepts_only_semver_tags() {
    let tmp = tempfile::tempdir().unwrap();

    // A pre-release tag is a valid krew version: it renders.
    let pre = "v0.2.0-rc.1";
    assert!(is_semver_tag(pre));
    let dist = placeholder_dist(&tmp.path().join("pre"), pre, &PLATFORMS);
    let accepted = spawn_render(&dist, pre);

    // Anything else is refused for the version itself, before any archive is
    // looked for (the directory is empty, so a missing-archive error would
    // show the check did not happen first).
    let empty = tmp.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let bad_tags = ["0.1.0", "v0.1", "v01.0.0"];
    let refused: Vec<Child> = bad_tags
        .iter()
        .map(|bad| spawn_render(&empty, bad))
        .collect();

    let out = finish(accepted);
    expect_success(&out, "krew/render of a pre-release");
    let doc: Value = serde_saphyr::from_str(std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    assert_eq!(str_at(&doc, "/spec/version"), pre);

    for (bad, child) in bad_tags.into_iter().zip(refused) {
        assert!(!is_semver_tag(bad));
        let out = finish(child);
        let stderr = expect_failure(&out, &format!("krew/render --version {bad}"));
        assert!(
            stderr.contains("not a semantic version"),
            "render should reject {bad:?} as a version, said: {stderr}"
        );
    }
}

// ---- krew itself, and the caveats on a real cluster ------------------------------------------

/// The built binary as a release ships it: stripped when `strip` is there (the release profile
/// strips too), which keeps packaging a debug build to seconds.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn release_like_binary(dir: &Path) -> PathBuf {
    let built = Path::new(env!("CARGO_BIN_EXE_kubectl-pg"));
    let stripped = dir.join("kubectl-pg");
    match Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(built)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => stripped,
        _ => built.to_path_buf(),
    }
}

/// `krew/dist` for linux/amd64 into `dir/dist`, as CI and the release run it: the static musl
/// build (profile `cross`, in the cross builds' shared target directory, so after `.ci/cross`
/// only a freshness check), packaged, and the manifest rendered with `--partial` (the other
/// platforms are not built here). Without cargo-zigbuild (`.ci/cross install`), outside CI, it
/// packages the host build instead (`--binary`), and says so.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn dist_for_linux_amd64(dir: &Path) -> PathBuf {
    let dist = dir.join("dist");
    let mut command = Command::new(python3());
    command
        .arg(krew_script("dist"))
        .args(["--version", VERSION, "--partial", "--out"])
        .arg(&dist)
        .env("CARGO_TARGET_DIR", crate::cross_dir().join("target"))
        .stdin(Stdio::null());
    let zigbuild = crate::cross_dir().join("venv/bin/cargo-zigbuild");
    if zigbuild.is_file() || crate::on_path("cargo-zigbuild") {
        command.args(["--platform", "linux/amd64", "--profile", "cross"]);
    } else {
        crate::skip_or_fail(
            "krew_installs_the_plugin_and_kubectl_runs_it (the musl build)",
            "cargo-zigbuild not found: packaging the host build instead",
        );
        let mut binary = std::ffi::OsString::from("linux/amd64=");
        binary.push(release_like_binary(dir));
        command.arg("--binary").arg(binary);
    }
    let out = command.output().expect("krew/dist runs");
    expect_success(&out, "krew/dist");
    dist
}

/// `krew install --manifest --archive` of what `krew/dist` made (the static Linux build and the
/// manifest it rendered); then kubectl finds the plugin in KREW_ROOT/bin and `kubectl pg
/// version` reaches the control plane. An archive whose sha256 is not the manifest's is refused.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[test]
fn krew_installs_the_plugin_and_kubectl_runs_it() {
    let plane = crate::k8s::control_plane();
    let tmp = tempfile::tempdir().unwrap();
    let dist = dist_for_linux_amd64(tmp.path());
    let archive = dist.join(archive_name(VERSION, "linux", "amd64"));
    let manifest = dist.join("pg.yaml");
    let rendered = fs::read_to_string(&manifest).expect("krew/dist rendered pg.yaml");
    assert!(
        rendered.contains(&sha256_hex(&fs::read(&archive).unwrap())),
        "the manifest holds the archive's sha256:\n{rendered}"
    );
    // An archive of that name with other bytes.
    let wrong_dir = tmp.path().join("wrong");
    fs::create_dir_all(&wrong_dir).unwrap();
    let wrong = wrong_dir.join(archive_name(VERSION, "linux", "amd64"));
    fs::write(&wrong, "not the archive the manifest hashes").unwrap();

    let krew_root = tmp.path().join("krew");
    let home = tmp.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let krew = |args: &[&OsStr]| {
        Command::new(&plane.krew)
            .args(args)
            .env("KREW_ROOT", &krew_root)
            .env("HOME", &home)
            .env("KREW_NO_UPGRADE_CHECK", "1")
            .stdin(Stdio::null())
            .output()
            .expect("krew runs")
    };
    let flag = |name: &str, path: &Path| {
        let mut arg = std::ffi::OsString::from(format!("--{name}="));
        arg.push(path);
        arg
    };

    // An archive that is not the one the manifest hashes: refused, nothing installed.
    let refused = krew(&[
        "install".as_ref(),
        &flag("manifest", &manifest),
        &flag("archive", &wrong),
    ]);
    let stderr = expect_failure(&refused, "krew install of an archive with another sha256");
    assert!(stderr.contains("checksum does not match"), "{stderr}");
    assert!(!krew_root.join("bin/kubectl-pg").exists());

    let installed = krew(&[
        "install".as_ref(),
        &flag("manifest", &manifest),
        &flag("archive", &archive),
    ]);
    expect_success(&installed, "krew install --manifest --archive");
    let said = String::from_utf8_lossy(&installed.stderr);
    assert!(said.contains("Installed plugin: pg"), "{said}");
    assert!(said.contains("Caveats:"), "krew shows the caveats: {said}");
    // What `krew list` reads (it needs an index this offline test does not fetch).
    let receipt = fs::read_to_string(krew_root.join("receipts/pg.yaml"))
        .expect("krew wrote a receipt for pg");
    assert!(
        receipt.contains(&format!("version: {VERSION}")),
        "{receipt}"
    );

    // kubectl's plugin lookup, with KREW_ROOT/bin the only directory on PATH (kubectl itself
    // is called by its path), so no other kubectl-pg can answer.
    let bin = krew_root.join("bin");
    let kubectl = |args: &[&str]| {
        Command::new(&plane.kubectl)
            .args(args)
            .env("PATH", &bin)
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("HOME", &home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("kubectl runs")
    };
    let plugins = kubectl(&["plugin", "list"]);
    expect_success(&plugins, "kubectl plugin list");
    let listed = String::from_utf8_lossy(&plugins.stdout);
    let expected = bin.join("kubectl-pg");
    assert!(
        listed.lines().any(|l| Path::new(l.trim()) == expected),
        "kubectl plugin list does not show {}:\n{listed}",
        expected.display()
    );
    let version = kubectl(&["pg", "version", "-o", "json"]);
    expect_success(&version, "kubectl pg version");
    let doc: Value = serde_json::from_slice(&version.stdout).unwrap_or_else(|e| {
        panic!(
            "kubectl pg version -o json is not JSON ({e}): {}",
            String::from_utf8_lossy(&version.stdout)
        )
    });
    assert_eq!(doc["kind"], "Version");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["server_version"],
        format!("v{}", plane.version),
        "the plugin reached the control plane through kubectl's environment"
    );
}

/// One rule of the caveats, `RESOURCE[.GROUP]: VERBS  (remark)`.
#[derive(Debug)]
struct CaveatRule {
    group: String,
    resource: String,
    verbs: Vec<String>,
}

/// The caveats' RBAC, read from the template: the rules of the section "In the namespace of
/// the release" and those of "At cluster scope". Every line of a section must be a rule, so
/// a permission written any other way fails here instead of being silently left out.
fn caveat_rules() -> (Vec<CaveatRule>, Vec<CaveatRule>, Vec<CaveatRule>) {
    const VERBS: [&str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    let template = fs::read_to_string(krew_script("pg.yaml")).unwrap();
    let caveats: Vec<&str> = template
        .lines()
        .skip_while(|l| l.trim_end() != "  caveats: |")
        .skip(1)
        .take_while(|l| l.trim().is_empty() || l.starts_with("    "))
        .collect();
    assert!(!caveats.is_empty(), "krew/pg.yaml has no caveats block");
    let (mut namespaced, mut cluster, mut ha) = (Vec::new(), Vec::new(), Vec::new());
    let mut section: Option<&mut Vec<CaveatRule>> = None;
    for line in caveats {
        let line = line.trim();
        if line.is_empty() {
            section = None;
        } else if line.starts_with("In the namespace of the release") {
            section = Some(&mut namespaced);
        } else if line.starts_with("At cluster scope") {
            section = Some(&mut cluster);
        } else if line.starts_with("Only for a highly available release") {
            section = Some(&mut ha);
        } else if line.ends_with("in its namespace:") && section.is_some() {
            // The second line of the section's heading.
        } else if let Some(rules) = section.as_mut() {
            let (name, rest) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("caveat line {line:?} is not RESOURCE[.GROUP]: VERBS"));
            let verbs: Vec<String> = rest
                .split('(')
                .next()
                .unwrap()
                .split(',')
                .map(|v| v.trim().to_string())
                .collect();
            for verb in &verbs {
                assert!(
                    VERBS.contains(&verb.as_str()),
                    "caveat line {line:?}: {verb:?} is not an RBAC verb"
                );
            }
            // RESOURCE[.GROUP][/SUBRESOURCE]
            let (base, sub) = name.split_once('/').unwrap_or((name, ""));
            let (resource, group) = base.split_once('.').unwrap_or((base, ""));
            let resource = if sub.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}/{sub}")
            };
            let resource = resource.as_str();
            assert!(
                resource
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'/'),
                "caveat line {line:?}: {resource:?} is not a resource"
            );
            rules.push(CaveatRule {
                group: group.to_string(),
                resource: resource.to_string(),
                verbs,
            });
        }
    }
    (namespaced, cluster, ha)
}

fn rules_yaml(rules: &[CaveatRule]) -> String {
    let quoted = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    rules
        .iter()
        .map(|r| {
            format!(
                "- apiGroups: [{:?}]\n  resources: [{:?}]\n  verbs: [{}]\n",
                r.group,
                r.resource,
                quoted(&r.verbs)
            )
        })
        .collect()
}

/// A ServiceAccount of the scope's namespace holding exactly the caveats' permissions: the
/// namespace's rules (with the highly available release's when `ha`) in a Role, the cluster
/// scope's in a ClusterRole, dropped with the returned grant. Its kubeconfig's context names
/// the namespace.
/// With `without` (a resource and a verb), that one verb is left out.
pub(crate) fn caveats_account<'a>(
    scope: &'a crate::scope::Scope,
    ha: bool,
    without: Option<(&str, &str)>,
) -> (PathBuf, ClusterGrant<'a>) {
    let (mut namespaced, cluster, ha_rules) = caveat_rules();
    assert!(
        !ha_rules.is_empty(),
        "no caveat rules for a highly available release"
    );
    if ha {
        namespaced.extend(ha_rules);
    }
    if let Some((resource, verb)) = without {
        let rule = namespaced
            .iter_mut()
            .find(|r| r.resource == resource)
            .unwrap_or_else(|| panic!("no caveat rule for {resource}"));
        rule.verbs.retain(|v| v != verb);
        namespaced.retain(|r| !r.verbs.is_empty());
    }
    let ns = scope.ns.as_str();
    let name = if without.is_some() {
        "caveats-less"
    } else {
        "caveats"
    };
    let role = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\nrules:\n{}",
        rules_yaml(&namespaced)
    );
    let kubeconfig = scope.service_account_kubeconfig(name, &role);
    let grant = ClusterGrant {
        plane: scope.plane,
        name: format!("{ns}-{name}"),
    };
    let cluster_yaml = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {g}\n\
         rules:\n{rules}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata:\n  name: {g}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  \
         name: {g}\nsubjects:\n- kind: ServiceAccount\n  name: {name}\n  namespace: {ns}\n",
        g = grant.name,
        rules = rules_yaml(&cluster)
    );
    let out = scope
        .plane
        .kubectl_stdin(&["apply", "-f", "-"], &cluster_yaml);
    assert!(out.status.success(), "{}", crate::OutputExt::describe(&out));
    (kubeconfig, grant)
}

/// A ClusterRole and ClusterRoleBinding, removed when dropped (namespaces are the scope's).
pub(crate) struct ClusterGrant<'a> {
    plane: &'a crate::k8s::ControlPlane,
    name: String,
}

impl Drop for ClusterGrant<'_> {
    fn drop(&mut self) {
        let _ = self.plane.kubectl(&[
            "delete",
            "clusterrolebinding,clusterrole",
            &self.name,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
}

/// A ServiceAccount holding exactly the caveats' permissions (a Role in its namespace, a
/// ClusterRole for the cluster-scoped part) runs the everyday commands in that namespace, which
/// its kubeconfig context names: install, status, dsn, psql, migrate up/status, user,
/// rotate-password, uninstall.
#[test]
fn the_caveats_rbac_is_enough_for_every_day_commands() {
    use crate::scope::Scope;
    use crate::OutputExt;

    let (namespaced, cluster, _) = caveat_rules();
    for resource in RBAC_RESOURCES {
        assert!(
            namespaced
                .iter()
                .chain(&cluster)
                .any(|r| r.resource == resource),
            "no caveat rule for {resource}"
        );
    }
    let scope = Scope::new("kpg-caveats");
    let ns = scope.ns.as_str();
    let (kubeconfig, grant) = caveats_account(&scope, false, None);

    // No -n: the namespace comes from the ServiceAccount's context.
    let run = |args: &[&str]| {
        let mut command = scope.kpg_command(args);
        command.env("KUBECONFIG", &kubeconfig);
        crate::k8s::run_with_stdin(&mut command, "")
    };
    let install = run(&["install", "--timeout", "120s", "-o", "json"]);
    crate::expect_code(&install, 0);
    let doc: Value = serde_json::from_slice(&install.stdout).unwrap();
    assert_eq!(doc["phase"], "Healthy", "{}", install.describe());
    assert_eq!(doc["namespace"], ns);

    let status = run(&["status", "-o", "json"]);
    crate::expect_code(&status, 0);
    let doc: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["phase"], "Healthy", "{}", status.describe());
    assert_eq!(doc["database_accessible"], true, "{}", status.describe());

    let dsn = run(&["dsn"]);
    crate::expect_code(&dsn, 0);
    let password = scope.kubectl_ns(&[
        "get",
        "secret",
        "postgres-credentials",
        "-o",
        "jsonpath={.data.password}",
    ]);
    let password = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        password.stdout_text().trim(),
    )
    .unwrap();
    let password = String::from_utf8(password).unwrap();
    assert_eq!(
        dsn.stdout_text().trim(),
        format!("postgresql://postgres:{password}@postgres.{ns}.svc.cluster.local:5432/learnflow?sslmode=disable"),
    );

    let psql = run(&["psql", "--", "-At", "-c", "select 1"]);
    crate::expect_code(&psql, 0);
    assert_eq!(psql.stdout_text().trim(), "1", "{}", psql.describe());

    let up = run(&["migrate", "up"]);
    crate::expect_code(&up, 0);
    let migrations = run(&["migrate", "status", "-o", "json"]);
    crate::expect_code(&migrations, 0);
    let doc: Value = serde_json::from_slice(&migrations.stdout).unwrap();
    assert_eq!(doc["kind"], "MigrationStatus");
    assert_eq!(doc["pending"], 0, "{}", migrations.describe());
    assert!(
        doc["applied"].as_u64().is_some_and(|n| n > 0),
        "{}",
        migrations.describe()
    );

    // The daily operations need no more than that either.
    let logs = run(&["logs", "--tail", "5"]);
    crate::expect_code(&logs, 0);
    let restart = run(&["restart", "--timeout", "120s", "-o", "json"]);
    crate::expect_code(&restart, 0);
    let doc: Value = serde_json::from_slice(&restart.stdout).unwrap();
    assert_eq!(doc["phase"], "Healthy", "{}", restart.describe());
    let bundle = scope.dir.path().join("caveats-report.tar.gz");
    let report = run(&["report", "-f", bundle.to_str().unwrap()]);
    crate::expect_code(&report, 0);
    assert!(
        !report.stderr_text().contains("not collected"),
        "{}",
        report.describe()
    );

    // Application users and rotation need nothing more (the Secret is patched, deployments listed).
    for args in [
        &["user", "create", "app"][..],
        &["user", "list", "-o", "json"],
        &["rotate-password", "--yes"],
        &["rotate-password", "--db-user", "app", "--yes"],
        &["user", "create", "temp"],
        &["user", "delete", "temp", "--yes"],
    ] {
        let out = run(args);
        crate::expect_code(&out, 0);
    }

    // dump and restore (pods/exec), growing the volume (claim patch, StorageClass list).
    let file = scope.dir.path().join("caveats.dump");
    let file = file.to_str().unwrap();
    crate::expect_code(&run(&["dump", "-f", file]), 0);
    crate::expect_code(&run(&["restore", "-f", file, "--clean", "--yes"]), 0);
    let grow = run(&[
        "install",
        "--upgrade",
        "--storage-size",
        "9Gi",
        "--timeout",
        "120s",
    ]);
    crate::expect_code(&grow, 0);
    let status = run(&["status", "-o", "json"]);
    let doc: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(doc["pvc"]["capacity"], "9Gi", "{}", status.describe());
    assert!(
        doc["pvc"]["usage"]["used_bytes"].is_u64(),
        "{}",
        status.describe()
    );

    let uninstall = run(&["uninstall", "--delete-data", "--yes"]);
    crate::expect_code(&uninstall, 0);
    let left = scope.kubectl_ns(&["get", "statefulsets,services,secrets", "-o", "name"]);
    assert!(left.status.success(), "{}", left.describe());
    assert_eq!(left.stdout_text().trim(), "", "left behind after uninstall");
    // The claim may still be finalising; it must at least be on its way out.
    let claims = scope.kubectl_ns(&["get", "pvc", "-o", "json"]);
    assert!(claims.status.success(), "{}", claims.describe());
    let claims: Value = serde_json::from_slice(&claims.stdout).unwrap();
    for claim in claims["items"].as_array().unwrap() {
        assert!(
            claim["metadata"]["deletionTimestamp"].is_string(),
            "PVC kept after uninstall --delete-data: {claim:#}"
        );
    }
    drop(grant);
}
