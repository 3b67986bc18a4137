//! An export's output files, sealed at rest: NDJSON written a window of resources at a time,
//! each window one frame (`length: u32 big endian | envelope`) sealed under the environment's
//! data key with associated data naming the environment, the job, the file and the frame's
//! number. Frames cannot be reordered, moved to another file or job, or cut off unnoticed (the
//! job's record says how many frames each file has). Nothing is ever written in plaintext; a
//! file is opened frame by frame as it is downloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};

use crate::compartment::Compartment;
use crate::error::{Error, Result};
use crate::keyring::Keyring;

/// The largest frame a reader accepts (a window's NDJSON is far smaller).
const MAX_FRAME: u32 = 256 * 1024 * 1024;

fn frame_aad(keyring: &Keyring, job: &str, file: &str, frame: u64) -> Vec<u8> {
    format!(
        "carevault-export\0{}\0{job}\0{file}\0{frame}",
        keyring.env_id()
    )
    .into_bytes()
}

fn io_error(e: &std::io::Error) -> Error {
    Error::Unavailable(format!("export file: {}", e.kind()))
}

/// Writes one output file: to `<name>.part` until [`SealedWriter::finish`] renames it.
pub(super) struct SealedWriter {
    keyring: Arc<Keyring>,
    job: String,
    name: String,
    part: PathBuf,
    path: PathBuf,
    out: BufWriter<tokio::fs::File>,
    frames: u64,
    /// Over the plaintext NDJSON, so the manifest can name what the file holds.
    digest: carevault_crypto::Sha256Stream,
}

impl SealedWriter {
    pub(super) async fn create(
        keyring: Arc<Keyring>,
        dir: &Path,
        job: &str,
        name: &str,
    ) -> Result<Self> {
        let path = dir.join(name);
        let part = dir.join(format!("{name}.part"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .await
            .map_err(|e| io_error(&e))?;
        Ok(Self {
            keyring,
            job: job.to_owned(),
            name: name.to_owned(),
            part,
            path,
            out: BufWriter::new(file),
            frames: 0,
            digest: carevault_crypto::Sha256Stream::default(),
        })
    }

    /// Seal and append one frame of NDJSON.
    pub(super) async fn write_frame(&mut self, ndjson: &[u8]) -> Result<()> {
        let aad = frame_aad(&self.keyring, &self.job, &self.name, self.frames);
        let (_, sealed) = self
            .keyring
            .seal(&Compartment::environment(), &aad, ndjson)
            .await?;
        let len = u32::try_from(sealed.len())
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| Error::Internal("export frame too large".into()))?;
        self.out
            .write_all(&len.to_be_bytes())
            .await
            .map_err(|e| io_error(&e))?;
        self.out
            .write_all(&sealed)
            .await
            .map_err(|e| io_error(&e))?;
        self.frames += 1;
        self.digest.update(ndjson);
        Ok(())
    }

    /// Flush, sync and rename into place; returns how many frames the file holds and the
    /// SHA-256 (hex) of its plaintext.
    pub(super) async fn finish(mut self) -> Result<(u64, String)> {
        self.out.flush().await.map_err(|e| io_error(&e))?;
        self.out
            .get_ref()
            .sync_all()
            .await
            .map_err(|e| io_error(&e))?;
        tokio::fs::rename(&self.part, &self.path)
            .await
            .map_err(|e| io_error(&e))?;
        Ok((self.frames, self.digest.finish_hex()))
    }
}

/// Reads one finished output file back, a frame at a time, as plaintext NDJSON.
pub struct OutputReader {
    keyring: Arc<Keyring>,
    job: String,
    name: String,
    input: BufReader<tokio::fs::File>,
    next: u64,
    frames: u64,
}

impl OutputReader {
    pub(super) async fn open(
        keyring: Arc<Keyring>,
        dir: &Path,
        job: &str,
        name: &str,
        frames: u64,
    ) -> Result<Self> {
        let file = tokio::fs::File::open(dir.join(name))
            .await
            .map_err(|_| Error::NotFound)?;
        Ok(Self {
            keyring,
            job: job.to_owned(),
            name: name.to_owned(),
            input: BufReader::new(file),
            next: 0,
            frames,
        })
    }

    /// The next frame's NDJSON, or None after the last one. A file cut short, extended or
    /// altered is an integrity error.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.next == self.frames {
            let mut rest = [0u8; 1];
            return match self.input.read(&mut rest).await.map_err(|e| io_error(&e))? {
                0 => Ok(None),
                _ => Err(Error::Integrity("export file longer than recorded".into())),
            };
        }
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .await
            .map_err(|_| Error::Integrity("export file cut short".into()))?;
        let len = u32::from_be_bytes(len);
        if len > MAX_FRAME {
            return Err(Error::Integrity("export frame too large".into()));
        }
        let mut sealed = vec![0u8; len as usize];
        self.input
            .read_exact(&mut sealed)
            .await
            .map_err(|_| Error::Integrity("export file cut short".into()))?;
        let aad = frame_aad(&self.keyring, &self.job, &self.name, self.next);
        let plain = self.keyring.open(&aad, &sealed).await?;
        self.next += 1;
        Ok(Some(plain))
    }
}
