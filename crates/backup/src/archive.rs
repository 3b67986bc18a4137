//! The backup file: an age stream (X25519 recipients or a scrypt passphrase) holding a magic
//! line, the manifest, then each part in the manifest's order. Written to a temporary file
//! beside the target and renamed when complete; read into a staging directory, every part
//! checked against its size and SHA-256, and the stream read to its authenticated end.

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

use age::secrecy::SecretString;
use carevault_crypto::Sha256Stream;

use crate::manifest::Manifest;
use crate::{BackupError, Result, io};

const MAGIC: &[u8] = b"CAREVAULT-BACKUP\n";
const MAX_MANIFEST: u64 = 16 << 20;

/// Who can open a new backup.
pub enum Encryption {
    /// age X25519 recipients (`age1...`): their private keys never need to be on the server.
    Recipients(Vec<age::x25519::Recipient>),
    /// A passphrase (scrypt).
    Passphrase(SecretString),
}

/// What opens an existing backup.
pub enum Decryption {
    Identities(Vec<Box<dyn age::Identity + Send + Sync>>),
    Passphrase(SecretString),
}

/// The first line of a file (a passphrase file), without its line ending.
fn first_line(path: &Path) -> Result<SecretString> {
    let text = fs::read_to_string(path).map_err(io(format!("cannot read {}", path.display())))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        return Err(BackupError::Usage(format!(
            "{} is empty; its first line is the passphrase",
            path.display()
        )));
    }
    Ok(SecretString::from(line))
}

impl Encryption {
    /// From `--recipient` values and `--recipients-file` lines (`#` comments allowed), or a
    /// `--passphrase-file` (first line, at least 12 bytes). age allows a passphrase only alone.
    pub fn from_args(
        recipients: &[String],
        recipients_file: Option<&Path>,
        passphrase_file: Option<&Path>,
    ) -> Result<Self> {
        let mut texts: Vec<String> = recipients.to_vec();
        if let Some(f) = recipients_file {
            let text = fs::read_to_string(f).map_err(io(format!("cannot read {}", f.display())))?;
            texts.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        match (texts.is_empty(), passphrase_file) {
            (true, None) => Err(BackupError::Usage(
                "say who can open the backup: --recipient age1..., --recipients-file FILE or --passphrase-file FILE".into(),
            )),
            (false, Some(_)) => Err(BackupError::Usage(
                "age encrypts to recipients or to a passphrase, not both; choose one".into(),
            )),
            (true, Some(f)) => {
                let pass = first_line(f)?;
                if age::secrecy::ExposeSecret::expose_secret(&pass).len() < 12 {
                    return Err(BackupError::Usage(format!(
                        "the passphrase in {} is shorter than 12 bytes",
                        f.display()
                    )));
                }
                Ok(Self::Passphrase(pass))
            }
            (false, None) => texts
                .iter()
                .map(|t| {
                    age::x25519::Recipient::from_str(t).map_err(|_| {
                        BackupError::Usage(format!(
                            "not an age X25519 recipient (age1...): {}",
                            t.chars().take(80).collect::<String>()
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Self::Recipients),
        }
    }

    fn encryptor(&self) -> Result<age::Encryptor> {
        match self {
            Self::Passphrase(p) => Ok(age::Encryptor::with_user_passphrase(p.clone())),
            Self::Recipients(r) => age::Encryptor::with_recipients(
                r.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(|e| BackupError::Usage(format!("cannot encrypt to these recipients: {e}"))),
        }
    }
}

impl Decryption {
    /// From `--identity FILE` (age identities, `AGE-SECRET-KEY-1...`) or `--passphrase-file`.
    pub fn from_args(identity: Option<&Path>, passphrase_file: Option<&Path>) -> Result<Self> {
        match (identity, passphrase_file) {
            (Some(f), None) => {
                let file = fs::File::open(f).map_err(io(format!("cannot read {}", f.display())))?;
                let ids = age::IdentityFile::from_buffer(BufReader::new(file))
                    .ok()
                    .and_then(|i| i.into_identities().ok())
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| {
                        BackupError::Usage(format!(
                            "{} holds no age identity (AGE-SECRET-KEY-1...)",
                            f.display()
                        ))
                    })?;
                Ok(Self::Identities(ids))
            }
            (None, Some(f)) => Ok(Self::Passphrase(first_line(f)?)),
            _ => Err(BackupError::Usage(
                "give the secret that opens the backup: --identity FILE or --passphrase-file FILE"
                    .into(),
            )),
        }
    }
}

/// A writer that hashes what passes through it (the finished file's SHA-256, recorded so
/// that the file can be checked later without the secret that opens it).
struct Hashing<W> {
    inner: W,
    hash: Sha256Stream,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write the backup of `manifest`'s parts (files under `staging`) to `out`, which must not
/// exist: a temporary file beside it, synced, then renamed. Returns the file's size and
/// SHA-256 (hex).
pub(crate) fn write(
    out: &Path,
    manifest: &Manifest,
    staging: &Path,
    enc: &Encryption,
) -> Result<(u64, String)> {
    if out.exists() {
        return Err(BackupError::Target(format!(
            "{} already exists; choose a new file name",
            out.display()
        )));
    }
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io(format!("cannot create a file in {}", dir.display())))?;
    let failed = io(format!("cannot write {}", out.display()));
    let result = (|| -> std::io::Result<String> {
        let sink = Hashing {
            inner: BufWriter::with_capacity(1 << 20, tmp.as_file()),
            hash: Sha256Stream::default(),
        };
        let mut w = enc
            .encryptor()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .wrap_output(sink)?;
        w.write_all(MAGIC)?;
        let json = serde_json::to_vec(manifest).map_err(std::io::Error::other)?;
        w.write_all(&(json.len() as u64).to_be_bytes())?;
        w.write_all(&json)?;
        for part in &manifest.parts {
            let mut f = fs::File::open(staging.join(&part.name))?;
            let copied = std::io::copy(&mut f, &mut w)?;
            if copied != part.size {
                return Err(std::io::Error::other("a part changed while it was written"));
            }
        }
        let mut sink = w.finish()?;
        sink.flush()?;
        let sha256 = sink.hash.finish_hex();
        tmp.as_file().sync_all()?;
        Ok(sha256)
    })();
    let sha256 = result.map_err(failed)?;
    let size = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    tmp.persist_noclobber(out).map_err(|e| BackupError::Io {
        what: format!("cannot create {}", out.display()),
        source: e.error,
    })?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot sync {}", dir.display())))?;
    Ok((size, sha256))
}

fn damaged(e: &std::io::Error) -> BackupError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => BackupError::Damaged("the file is truncated".into()),
        _ => {
            BackupError::Damaged("its content does not authenticate (altered or truncated)".into())
        }
    }
}

/// Decrypt `file` into `staging`: the manifest (checked with `check`), then every part, each
/// against its size and hash, then the stream's authenticated end. Nothing is left half-read:
/// on any error the caller discards `staging`.
pub(crate) fn read(
    file: &Path,
    dec: &Decryption,
    staging: &Path,
    check: impl FnOnce(&Manifest) -> Result<()>,
) -> Result<Manifest> {
    let f = fs::File::open(file).map_err(io(format!("cannot read {}", file.display())))?;
    let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(1 << 20, f))
        .map_err(|_| BackupError::Damaged("not a CareVault backup (no valid age header)".into()))?;
    let mut r = decrypt(decryptor, dec)?;
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic).map_err(|e| damaged(&e))?;
    if magic != MAGIC {
        return Err(BackupError::Damaged("not a CareVault backup".into()));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len).map_err(|e| damaged(&e))?;
    let len = u64::from_be_bytes(len);
    if len > MAX_MANIFEST {
        return Err(BackupError::Damaged("the manifest is too large".into()));
    }
    let mut json = Vec::new();
    (&mut r)
        .take(len)
        .read_to_end(&mut json)
        .map_err(|e| damaged(&e))?;
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|_| BackupError::Damaged("the manifest is not readable".into()))?;
    check(&manifest)?;
    for part in &manifest.parts {
        unpack_part(&mut r, staging, part)?;
    }
    let mut rest = [0u8; 1];
    match r.read(&mut rest) {
        Ok(0) => Ok(manifest),
        Ok(_) => Err(BackupError::Damaged("data after the last part".into())),
        Err(e) => Err(damaged(&e)),
    }
}

fn decrypt<R: BufRead>(
    decryptor: age::Decryptor<R>,
    dec: &Decryption,
) -> Result<age::stream::StreamReader<R>> {
    let scrypt = decryptor.is_scrypt();
    let passphrase_id;
    let ids: Vec<&dyn age::Identity> = match (dec, scrypt) {
        (Decryption::Passphrase(p), true) => {
            passphrase_id = age::scrypt::Identity::new(p.clone());
            vec![&passphrase_id]
        }
        (Decryption::Identities(ids), false) => ids
            .iter()
            .map(|i| i.as_ref() as &dyn age::Identity)
            .collect(),
        (Decryption::Passphrase(_), false) => {
            return Err(BackupError::Usage(
                "the backup is encrypted to age recipients, not a passphrase; give --identity FILE"
                    .into(),
            ));
        }
        (Decryption::Identities(_), true) => {
            return Err(BackupError::Usage(
                "the backup is encrypted with a passphrase; give --passphrase-file FILE".into(),
            ));
        }
    };
    decryptor.decrypt(ids.into_iter()).map_err(|e| match e {
        age::DecryptError::InvalidHeader | age::DecryptError::UnknownFormat => {
            BackupError::Damaged("the age header is damaged".into())
        }
        age::DecryptError::Io(e) => damaged(&e),
        age::DecryptError::ExcessiveWork { .. } => BackupError::Damaged(
            "the passphrase's work factor is far above what CareVault writes; not a CareVault backup?"
                .into(),
        ),
        // No identity or passphrase opens the file key (or its MAC fails): the wrong secret.
        _ => BackupError::WrongKey,
    })
}

fn unpack_part(r: &mut impl Read, staging: &Path, part: &crate::Part) -> Result<()> {
    let path = staging.join(&part.name);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io("cannot create the staging directory"))?;
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(format!("cannot write {}", path.display())))?;
    let mut hash = Sha256Stream::default();
    let mut left = part.size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = r.read(&mut buf[..want]).map_err(|e| damaged(&e))?;
        if n == 0 {
            return Err(BackupError::Damaged(format!(
                "part {} is truncated",
                part.name
            )));
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io(format!("cannot write {}", path.display())))?;
        left -= n as u64;
    }
    out.sync_all()
        .map_err(io(format!("cannot write {}", path.display())))?;
    if hash.finish_hex() != part.sha256 {
        return Err(BackupError::Damaged(format!(
            "part {} does not match its SHA-256 in the manifest",
            part.name
        )));
    }
    Ok(())
}

/// Size and SHA-256 of a file, streamed.
pub(crate) fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut f = fs::File::open(path).map_err(io(format!("cannot read {}", path.display())))?;
    let mut hash = Sha256Stream::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("cannot read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hash.finish_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FORMAT;
    use crate::{Manifest, Part};

    fn staged(dir: &Path) -> Manifest {
        let mut parts = Vec::new();
        for (name, bytes) in [
            ("database.sqlite", vec![7u8; 200_000]),
            ("keys/keyring.json", b"{}".to_vec()),
        ] {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
            let (size, sha256) = hash_file(&path).unwrap();
            parts.push(Part {
                name: name.into(),
                size,
                sha256,
            });
        }
        Manifest {
            format: FORMAT,
            environment_id: "env-test".into(),
            backend: "sqlite".into(),
            node: "node-1".into(),
            created_at: "2026-12-05T00:00:00Z".into(),
            carevault_version: "0".into(),
            key_provider: "file".into(),
            kek_versions: vec![1],
            hsm_kek_versions: vec![],
            audit_public_key: String::new(),
            database: carevault_store::SnapshotFacts::default(),
            parts,
        }
    }

    #[test]
    fn an_archive_round_trips_and_refuses_wrong_keys_and_altered_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let manifest = staged(&src);
        let id = age::x25519::Identity::generate();
        let out = dir.path().join("b.cvbackup");
        let enc = Encryption::Recipients(vec![id.to_public()]);
        let (size, sha256) = write(&out, &manifest, &src, &enc).unwrap();
        assert_eq!(hash_file(&out).unwrap(), (size, sha256));
        // Only the final file is left: no partial file beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(matches!(
            write(&out, &manifest, &src, &enc),
            Err(BackupError::Target(_))
        ));

        let dec = Decryption::Identities(vec![Box::new(id)]);
        let dst = dir.path().join("dst");
        let read_back = read(&out, &dec, &dst, |_| Ok(())).unwrap();
        assert_eq!(read_back.parts.len(), 2);
        assert_eq!(
            fs::read(dst.join("database.sqlite")).unwrap(),
            vec![7u8; 200_000]
        );

        let other = Decryption::Identities(vec![Box::new(age::x25519::Identity::generate())]);
        let err = read(&out, &other, &dir.path().join("d2"), |_| Ok(())).unwrap_err();
        assert!(matches!(err, BackupError::WrongKey), "{err}");

        let mut bytes = fs::read(&out).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        let bad = dir.path().join("bad.cvbackup");
        fs::write(&bad, &bytes).unwrap();
        let err = read(&bad, &dec, &dir.path().join("d3"), |_| Ok(())).unwrap_err();
        assert!(matches!(err, BackupError::Damaged(_)), "{err}");
    }
}
