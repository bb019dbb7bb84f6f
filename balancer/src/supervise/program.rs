//! The program file an instance runs, as it was when its process started.
//! A reload that finds the file changed (a new build in place) restarts
//! the instance, the way a changed command line does.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What identifies one version of a program file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    /// The file `argv[0]` names, found as `execvp` finds it: a name with a
    /// `/` from `cwd` (the instance's working directory), a bare name on
    /// `PATH`. `None` when there is no such file.
    pub fn of(argv: &[String], cwd: Option<&Path>) -> Option<Self> {
        let path = resolve(argv.first()?, cwd, std::env::var_os("PATH").as_deref())?;
        let m = std::fs::metadata(&path).ok()?;
        Some(Self {
            path,
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}

fn resolve(program: &str, cwd: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return Some(match cwd {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        });
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_file_as_execvp_would() {
        let dir = std::env::temp_dir();
        assert_eq!(
            resolve("bin/game", Some(Path::new("/srv")), None),
            Some(PathBuf::from("/srv/bin/game"))
        );
        assert_eq!(
            resolve("/opt/game", Some(Path::new("/srv")), None),
            Some(PathBuf::from("/opt/game"))
        );
        assert_eq!(resolve("./game", None, None), Some(PathBuf::from("./game")));
        let file = dir.join(format!("lb-program-test-{}", std::process::id()));
        std::fs::write(&file, b"#!/bin/sh\n").unwrap();
        let name = file.file_name().unwrap().to_str().unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.to_str().unwrap()]).unwrap();
        assert_eq!(resolve(name, None, Some(&path)), Some(file.clone()));
        assert_eq!(resolve("lb-no-such-program", None, Some(&path)), None);

        // A rewrite changes the stamp.
        let argv = [file.to_str().unwrap().to_string()];
        let before = Stamp::of(&argv, None).unwrap();
        assert_eq!(Stamp::of(&argv, None), Some(before.clone()));
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, b"#!/bin/sh\necho new build\n").unwrap();
        assert_ne!(Stamp::of(&argv, None), Some(before));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(Stamp::of(&argv, None), None);
    }
}
