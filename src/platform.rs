//! What differs between the operating systems the plugin ships for (Linux, macOS, Windows), in
//! one place: how a program is found on PATH and where the user's home is. Signals are the
//! commands' (`commands::Interrupts`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Where PATH finds `program`, as kubectl finds programs (Go's `exec.LookPath`): on Unix the
/// first executable file of that name; on Windows a name without an extension also matches
/// `name` + each of PATHEXT's extensions (`.COM;.EXE;.BAT;.CMD` when unset), so `psql` finds
/// `psql.exe` and a credential plugin named `aws` finds `aws.cmd`. A name holding a directory
/// is not searched: it is returned as given.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if Path::new(program).components().count() != 1 {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    let extensions = cfg!(windows).then(|| {
        std::env::var("PATHEXT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_PATHEXT.into())
    });
    search(program, &path, extensions.as_deref(), is_executable)
}

/// Windows' PATHEXT when the variable is unset, as Go's LookPath assumes it.
const DEFAULT_PATHEXT: &str = ".COM;.EXE;.BAT;.CMD";

/// The search itself, for both families: `extensions` is PATHEXT on Windows, None on Unix.
fn search(
    program: &str,
    path: &OsStr,
    extensions: Option<&str>,
    usable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut names = vec![program.to_string()];
    if let Some(extensions) = extensions {
        let has_extension = Path::new(program).extension().is_some();
        let appended = extensions
            .split(';')
            .filter(|e| !e.is_empty())
            .map(|e| format!("{program}{}", e.to_ascii_lowercase()));
        if has_extension {
            names.extend(appended);
        } else {
            names = appended.collect();
        }
    }
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|candidate| usable(candidate))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// The user's home: `$HOME` on Unix (else the password database), `%USERPROFILE%` on Windows;
/// the same directory kube reads `.kube\config` from when KUBECONFIG is unset.
pub fn home_dir() -> Option<PathBuf> {
    std::env::home_dir().filter(|h| !h.as_os_str().is_empty())
}

/// The kubeconfig read when KUBECONFIG is unset, as the platform's users write it.
pub const DEFAULT_KUBECONFIG: &str = if cfg!(windows) {
    r"%USERPROFILE%\.kube\config"
} else {
    "~/.kube/config"
};

/// A path that opens this process's stdout, for writers that take a path (`report -f -`):
/// `/dev/stdout` on Unix; Windows has none (`CONOUT$` is the console, not a redirection).
pub fn stdout_path() -> Option<PathBuf> {
    cfg!(unix).then(|| PathBuf::from("/dev/stdout"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(dirs: &[&Path]) -> std::ffi::OsString {
        std::env::join_paths(dirs).unwrap()
    }

    #[test]
    fn unix_finds_the_name_itself_in_path_order() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(b.path().join("psql"), "").unwrap();
        std::fs::write(b.path().join("psql.exe"), "").unwrap();
        let path = path_of(&[a.path(), b.path()]);
        let found = search("psql", &path, None, Path::is_file);
        assert_eq!(found, Some(b.path().join("psql")));
        std::fs::write(a.path().join("psql"), "").unwrap();
        let found = search("psql", &path, None, Path::is_file);
        assert_eq!(found, Some(a.path().join("psql")));
    }

    #[test]
    fn windows_appends_pathext_to_a_bare_name() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // A file named exactly like the command is not what Windows runs.
        std::fs::write(a.path().join("aws"), "").unwrap();
        std::fs::write(b.path().join("aws.cmd"), "").unwrap();
        std::fs::write(b.path().join("psql.exe"), "").unwrap();
        let path = path_of(&[a.path(), b.path()]);
        assert_eq!(
            search("psql", &path, Some(DEFAULT_PATHEXT), Path::is_file),
            Some(b.path().join("psql.exe"))
        );
        assert_eq!(
            search("aws", &path, Some(DEFAULT_PATHEXT), Path::is_file),
            Some(b.path().join("aws.cmd"))
        );
        // PATHEXT's order decides within a directory.
        std::fs::write(b.path().join("aws.exe"), "").unwrap();
        assert_eq!(
            search("aws", &path, Some(".EXE;.CMD"), Path::is_file),
            Some(b.path().join("aws.exe"))
        );
        // A name with an extension is tried as given first.
        assert_eq!(
            search("aws.cmd", &path, Some(DEFAULT_PATHEXT), Path::is_file),
            Some(b.path().join("aws.cmd"))
        );
        assert_eq!(
            search("kubelogin", &path, Some(DEFAULT_PATHEXT), Path::is_file),
            None
        );
    }

    #[cfg(unix)]
    #[test]
    fn unix_skips_files_that_are_not_executable() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (dir, mode) in [(&a, 0o644), (&b, 0o755)] {
            let file = dir.path().join("plugin");
            std::fs::write(&file, "").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let path = path_of(&[a.path(), b.path()]);
        assert_eq!(
            search("plugin", &path, None, is_executable),
            Some(b.path().join("plugin"))
        );
    }

    #[test]
    fn a_name_with_a_directory_is_not_searched() {
        assert_eq!(
            find_program("./bin/plugin"),
            Some(PathBuf::from("./bin/plugin"))
        );
    }
}
