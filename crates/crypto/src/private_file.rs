//! Files only the service account may read (keys, key-state, session tokens, certificates'
//! private keys): created with mode 0600 and synced, or replaced atomically so that a crash
//! leaves either the old content or the new, never a torn file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Create `path`, which must not exist yet, with mode 0600, write `bytes` and sync them.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replace `path` (or create it) with `bytes`, mode 0600, atomically: the bytes go to a
/// temporary file beside it (`<name>.tmp`), which is synced, renamed over `path`, and the
/// directory synced.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A temporary file left by a crash is ours to replace.
    let _ = fs::remove_file(&tmp);
    write_private_new(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_private_file_is_0600_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_private_new(&path, b"one").unwrap();
        assert_eq!(mode(&path), 0o600);
        let err = write_private_new(&path, b"two").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
    }

    #[test]
    fn an_atomic_replace_leaves_the_new_content_0600_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        // A temporary file left behind by a crash does not stop the next write.
        fs::write(dir.path().join("state.json.tmp"), b"torn").unwrap();
        write_private_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert!(!dir.path().join("state.json.tmp").exists());
    }
}
