//! The journal that lets an interrupted import resume.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::client;

/// Which units are done, kept in an append-only file so a crash loses at most the units in
/// flight (the server has them; they are sent again, as `PUT`s with the same ids, or rejected
/// by the same rule again).
pub(super) struct Journal {
    file: fs::File,
    pub(super) done: HashSet<(String, usize)>,
}

impl Journal {
    pub(super) fn open(path: &Path, server: &str, batch: usize, restart: bool) -> Result<Self> {
        let absolute =
            fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
        let key =
            carevault_crypto::sha256_hex(format!("{server}\n{}", absolute.display()).as_bytes());
        let dir = client::config_dir()?.join("imports");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let journal = dir.join(format!("{}.journal", &key[..32]));
        if restart {
            let _ = fs::remove_file(&journal);
        }
        let header = format!("carevault-import 1 batch={batch}");
        let mut done = HashSet::new();
        let existing = fs::read_to_string(&journal).ok();
        if let Some(text) = &existing {
            let mut lines = text.lines();
            if lines.next() != Some(header.as_str()) {
                bail!(
                    "an earlier import of {} used another --batch size; resume with the same size, or pass --restart",
                    path.display()
                );
            }
            for line in lines {
                if let Some((name, index)) = line.rsplit_once('\t')
                    && let Ok(index) = index.parse()
                {
                    done.insert((name.to_owned(), index));
                }
            }
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .with_context(|| format!("cannot write {}", journal.display()))?;
        if existing.is_none() {
            writeln!(file, "{header}")?;
        }
        Ok(Self { file, done })
    }

    pub(super) fn record(&mut self, name: &str, index: usize) -> Result<()> {
        writeln!(self.file, "{name}\t{index}").context("cannot write the import journal")?;
        self.done.insert((name.to_owned(), index));
        Ok(())
    }
}
