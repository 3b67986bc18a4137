//! Off-site copies of scheduled backups: after each backup is written (and the local
//! directory pruned), the finished, encrypted file is copied to every target of
//! `backup.offsite_dir` and `backup.s3_*`, then the target is pruned by the same `backup.keep`
//! rule. A copy never looks complete before it is: a directory target gets a hidden
//! `.NAME.XXXX.partial` file, synced, then renamed; an S3 target a multipart upload, which
//! the store shows only once completed. A failing target is tried [`ATTEMPTS`] times with a
//! doubling pause; the local backup is kept whatever happens to its copies.

mod s3;

use std::path::{Path, PathBuf};
use std::time::Duration;

use carevault_server::config::{Keep, OffsiteTarget};

use crate::{BackupError, Result, io};

/// Attempts per target and backup before the copy counts as failed.
pub const ATTEMPTS: u32 = 3;
/// The pause before the second attempt; it doubles for each one after.
const FIRST_PAUSE: Duration = Duration::from_secs(2);

/// The configured targets, opened (credentials read) when the schedule starts.
pub struct Offsite {
    targets: Vec<Target>,
}

enum Target {
    Dir(PathBuf),
    S3(Box<s3::S3>),
}

/// What one attempt at one target did.
pub struct Attempt {
    /// The target's kind: `dir` or `s3` (a metric label).
    pub target: &'static str,
    /// 1 to [`ATTEMPTS`].
    pub attempt: u32,
    /// How long the attempt took (the copy and the target's pruning).
    pub elapsed: Duration,
    pub result: Result<()>,
}

impl Offsite {
    /// Open `targets`; S3 credentials come from their file or `env` (the process environment
    /// in the server). An error names the key at fault.
    pub fn open(targets: &[OffsiteTarget], env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut out = Vec::new();
        for t in targets {
            out.push(match t {
                OffsiteTarget::Dir(dir) => Target::Dir(dir.clone()),
                OffsiteTarget::S3(s3) => Target::S3(Box::new(s3::S3::open(s3, &env)?)),
            });
        }
        Ok(Self { targets: out })
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Copy `file` to every target and prune each by `keep`, retrying a failing target;
    /// `report` hears of every attempt as it ends. Blocking: run it off the async threads.
    pub fn copy(&self, file: &Path, keep: &Keep, mut report: impl FnMut(Attempt)) {
        for target in &self.targets {
            for attempt in 1..=ATTEMPTS {
                if attempt > 1 {
                    std::thread::sleep(FIRST_PAUSE.saturating_mul(1 << (attempt - 2)));
                }
                let started = std::time::Instant::now();
                let result = target.copy(file, keep);
                let ok = result.is_ok();
                report(Attempt {
                    target: target.label(),
                    attempt,
                    elapsed: started.elapsed(),
                    result,
                });
                if ok {
                    break;
                }
            }
        }
    }
}

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Self::Dir(_) => "dir",
            Self::S3(_) => "s3",
        }
    }

    fn copy(&self, file: &Path, keep: &Keep) -> Result<()> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| BackupError::Usage("a backup file has no name".into()))?;
        match self {
            Self::Dir(dir) => {
                copy_to_dir(file, dir, &name)?;
                crate::schedule::prune(dir, keep)?;
            }
            Self::S3(s3) => {
                s3.upload(file, &name)?;
                s3.prune(keep)?;
            }
        }
        Ok(())
    }
}

/// Copy `file` into `dir` as `name`: a hidden temporary file, synced, renamed, the directory
/// synced. The directory is not created: an unmounted share must fail, not fill the disk
/// under its mount point.
fn copy_to_dir(file: &Path, dir: &Path, name: &str) -> Result<()> {
    let what = format!("cannot copy the backup to {}", dir.display());
    if !dir.is_dir() {
        return Err(BackupError::Target(format!(
            "{what}: not a directory (is the share mounted?)"
        )));
    }
    crate::schedule::remove_partials(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io(what.clone()))?;
    let mut src = std::fs::File::open(file).map_err(io("cannot read the backup"))?;
    std::io::copy(&mut src, tmp.as_file_mut()).map_err(io(what.clone()))?;
    tmp.as_file().sync_all().map_err(io(what.clone()))?;
    tmp.persist(dir.join(name))
        .map_err(|e| io(what.clone())(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_target_gets_the_same_bytes_and_is_pruned() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let day = 86_400 * 1_000_000;
        let start = 1_796_500_800 * 1_000_000;
        let keep = Keep::parse("2 last").unwrap();
        let offsite =
            Offsite::open(&[OffsiteTarget::Dir(dst.path().to_path_buf())], |_| None).unwrap();
        for d in 0..3 {
            let file = src
                .path()
                .join(crate::schedule::backup_name(start + d * day));
            std::fs::write(&file, vec![d as u8; 1000]).unwrap();
            let mut attempts = Vec::new();
            offsite.copy(&file, &keep, |a| attempts.push(a));
            assert_eq!(attempts.len(), 1);
            assert!(attempts[0].result.is_ok());
            assert_eq!(
                std::fs::read(dst.path().join(file.file_name().unwrap())).unwrap(),
                vec![d as u8; 1000]
            );
        }
        let left = crate::schedule::list_backups(dst.path()).unwrap();
        assert_eq!(left.len(), 2);
        assert_eq!(left[0].0, start + day);
        let names: Vec<String> = std::fs::read_dir(dst.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    }

    #[test]
    fn a_missing_directory_is_not_created() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join(crate::schedule::backup_name(0));
        std::fs::write(&file, b"x").unwrap();
        let gone = src.path().join("unmounted");
        let e = copy_to_dir(&file, &gone, "b.age").unwrap_err();
        assert!(e.to_string().contains("mounted"), "{e}");
        assert!(!gone.exists());
    }
}
