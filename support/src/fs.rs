//! Files and directories readable by their owner only: keys, tokens,
//! spooled results and the coordinator's data dir all go through here, so
//! the modes and the write-then-rename are decided once.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file-system operation on `path` failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}", path = path.display())]
pub struct PrivateFileError {
    /// The file or directory being operated on.
    pub path: PathBuf,
    /// The underlying error.
    pub source: std::io::Error,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PrivateFileError + '_ {
    move |source| PrivateFileError {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` atomically with the given mode: to a
/// temporary name, synced, then renamed, so a crash never leaves half a file.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), PrivateFileError> {
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
        file.write_all(contents).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Creates `dir` and its parents (mode 0700 on Unix) if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), PrivateFileError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_replace_atomically_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        let path = sub.join("secret");
        write_private(&path, b"one", 0o600).unwrap();
        write_private(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&sub), 0o700);
        }
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing/file");
        let err = write_private(&missing, b"x", 0o600).unwrap_err();
        assert!(err
            .to_string()
            .starts_with(&dir.path().display().to_string()));
    }
}
