//! An S3-compatible bucket as an off-site target: `rusty-s3` signs each request (SigV4, as a
//! presigned URL), `ureq` sends it. Uploads are multipart in parts of [`PART_SIZE`], read from
//! the file one part at a time (a 1 GB backup never sits in memory), so the object appears
//! only when the upload is completed; a failed upload is aborted.
//!
//! Secrets: the access key id travels in the signed URL and the secret signs it, so neither a
//! URL, nor a `ureq` error (which may quote one), nor a response body (an S3 error names the
//! access key id) ever reaches a log line, the status file or an error: failures are described
//! by the step, the HTTP status or the I/O error kind only.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use carevault_server::config::{Keep, S3Target};
use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use crate::schedule::{parse_backup_name, retained};
use crate::{BackupError, Result};

/// 8 MiB, as the AWS CLI uses: at most 10,000 parts, so objects of up to about 78 GiB.
const PART_SIZE: usize = 8 << 20;
/// How long a signed URL stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// One request's limit (a part of 8 MiB over a slow link included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);

pub(crate) struct S3 {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    agent: ureq::Agent,
}

impl S3 {
    /// The target with its credentials: `target.credentials_file` (mode 0600;
    /// `aws_access_key_id = ...` and `aws_secret_access_key = ...` lines, as in
    /// `~/.aws/credentials`) or else `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` from `env`.
    pub(crate) fn open(target: &S3Target, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let credentials = match &target.credentials_file {
            Some(path) => credentials_from_file(path)?,
            None => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(k), Some(s)) if !k.is_empty() && !s.is_empty() => Credentials::new(k, s),
                _ => {
                    return Err(BackupError::Usage(
                        "configuration error in `backup.s3_credentials_file`: no S3 credentials; name a file (mode 0600) with aws_access_key_id and aws_secret_access_key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                    ));
                }
            },
        };
        let bucket = Bucket::new(
            target.endpoint.clone(),
            UrlStyle::Path,
            target.bucket.clone(),
            target.region.clone(),
        )
        .map_err(|_| {
            BackupError::Usage(
                "configuration error in `backup.s3_endpoint`: not usable with this bucket".into(),
            )
        })?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            // A redirect would carry a signed request somewhere the operator did not name.
            .max_redirects(0)
            .build()
            .new_agent();
        Ok(Self {
            bucket,
            credentials,
            prefix: target.prefix.clone(),
            agent,
        })
    }

    /// Upload `file` as `prefix` + `name` (multipart; aborted on failure).
    pub(crate) fn upload(&self, file: &Path, name: &str) -> Result<()> {
        let key = format!("{}{name}", self.prefix);
        let creds = Some(&self.credentials);
        let url = self
            .bucket
            .create_multipart_upload(creds, &key)
            .sign(SIGNED_FOR);
        let body = self.call("starting the upload", || {
            self.agent.post(url.as_str()).send_empty()
        })?;
        let upload_id = CreateMultipartUpload::parse_response(&body)
            .map_err(|_| failed("starting the upload", "an unreadable answer"))?
            .upload_id()
            .to_owned();
        let done = self.upload_parts(file, &key, &upload_id);
        if done.is_err() {
            // Best effort: a part left behind is billed until the bucket's lifecycle rule
            // removes it (docs/backups.md suggests one).
            let url = self
                .bucket
                .abort_multipart_upload(creds, &key, &upload_id)
                .sign(SIGNED_FOR);
            let _ = self.agent.delete(url.as_str()).call();
        }
        done
    }

    fn upload_parts(&self, file: &Path, key: &str, upload_id: &str) -> Result<()> {
        let creds = Some(&self.credentials);
        let mut f = fs::File::open(file).map_err(crate::io("cannot read the backup"))?;
        let mut etags: Vec<String> = Vec::new();
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let n = read_full(&mut f, &mut buf).map_err(crate::io("cannot read the backup"))?;
            // An empty file is one empty part; otherwise no empty trailing part.
            if n == 0 && !etags.is_empty() {
                break;
            }
            let number = u16::try_from(etags.len() + 1)
                .ok()
                .filter(|n| *n <= 10_000)
                .ok_or_else(|| failed("uploading", "more than 10,000 parts"))?;
            let url = self
                .bucket
                .upload_part(creds, key, number, upload_id)
                .sign(SIGNED_FOR);
            let part = &buf[..n];
            let reply = self
                .agent
                .put(url.as_str())
                .send(part)
                .map_err(|e| transport("uploading a part", &e))?;
            check_status("uploading a part", reply.status().as_u16())?;
            let etag = reply
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| failed("uploading a part", "no ETag in the answer"))?;
            etags.push(etag.to_owned());
            if n < PART_SIZE {
                break;
            }
        }
        let complete = self.bucket.complete_multipart_upload(
            creds,
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = complete.sign(SIGNED_FOR);
        let xml = complete.body();
        let body = self.call("completing the upload", || {
            self.agent.post(url.as_str()).send(xml.as_bytes())
        })?;
        // S3 may answer 200 and still fail the completion: the body is then an <Error>. The
        // success answer's element differs between stores (moto says
        // CompleteMultipartUploadResponse), so only the error is looked for.
        if body.contains("<Error>") {
            return Err(failed(
                "completing the upload",
                "the store refused the completion",
            ));
        }
        Ok(())
    }

    /// The scheduled backups under the prefix, by name.
    fn list(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(self.prefix.as_str());
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let body = self.call("listing the bucket", || self.agent.get(url.as_str()).call())?;
            let page = ListObjectsV2::parse_response(&body)
                .map_err(|_| failed("listing the bucket", "an unreadable answer"))?;
            names.extend(
                page.contents
                    .iter()
                    .filter_map(|o| o.key.strip_prefix(self.prefix.as_str()))
                    .filter(|n| !n.contains('/'))
                    .map(str::to_owned),
            );
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(names),
            }
        }
    }

    /// Delete the scheduled backups under the prefix that `keep` does not keep; how many.
    pub(crate) fn prune(&self, keep: &Keep) -> Result<usize> {
        let backups: Vec<(i64, String)> = self
            .list()?
            .into_iter()
            .filter_map(|n| parse_backup_name(&n).map(|t| (t, n)))
            .collect();
        let times: Vec<i64> = backups.iter().map(|(t, _)| *t).collect();
        let kept = retained(keep, &times);
        let mut deleted = 0;
        for (t, name) in backups {
            if kept.contains(&t) {
                continue;
            }
            let key = format!("{}{name}", self.prefix);
            let url = self
                .bucket
                .delete_object(Some(&self.credentials), &key)
                .sign(SIGNED_FOR);
            self.call("deleting an old backup", || {
                self.agent.delete(url.as_str()).call()
            })?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Send a request, check its status, return the body (S3 answers are small XML).
    fn call(
        &self,
        step: &str,
        send: impl FnOnce() -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String> {
        let mut reply = send().map_err(|e| transport(step, &e))?;
        check_status(step, reply.status().as_u16())?;
        reply
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| transport(step, &e))
    }
}

/// Fill `buf` from `r` as far as the file goes; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn failed(step: &str, why: &str) -> BackupError {
    BackupError::Target(format!("S3 target: {step} failed: {why}"))
}

fn check_status(step: &str, status: u16) -> Result<()> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let hint = match status {
        403 => " (access denied: check the credentials and the bucket's policy)",
        404 => " (no such bucket?)",
        _ => "",
    };
    Err(failed(step, &format!("HTTP status {status}{hint}")))
}

/// A transport failure described without the URL or anything else from the request.
fn transport(step: &str, e: &ureq::Error) -> BackupError {
    let why = match e {
        ureq::Error::Io(io) => format!("{}", io.kind()),
        ureq::Error::Timeout(_) => "timed out".to_owned(),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        ureq::Error::ConnectionFailed => "connection failed".to_owned(),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS failed".to_owned(),
        ureq::Error::StatusCode(s) => format!("HTTP status {s}"),
        ureq::Error::BodyExceedsLimit(_) => "answer too large".to_owned(),
        _ => "request failed".to_owned(),
    };
    failed(step, &why)
}

/// Read `aws_access_key_id` and `aws_secret_access_key` from a 0600 file. Errors name the file
/// and the missing field, never a line of it.
fn credentials_from_file(path: &Path) -> Result<Credentials> {
    use std::os::unix::fs::PermissionsExt;
    let key = "backup.s3_credentials_file";
    let bad = |why: String| BackupError::Usage(format!("configuration error in `{key}`: {why}"));
    let meta = fs::metadata(path)
        .map_err(|e| bad(format!("cannot read {}: {}", path.display(), e.kind())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "{} is mode {mode:04o}, open to other users; chmod 600 it",
            path.display()
        )));
    }
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read {}: {}", path.display(), e.kind())))?,
    );
    let (mut id, mut secret) = (None, None);
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        match name.trim() {
            "aws_access_key_id" => id = Some(value.trim().to_owned()),
            "aws_secret_access_key" => secret = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok(Credentials::new(id, secret))
        }
        _ => {
            let mut why = format!("{} needs two lines: ", path.display());
            let _ = write!(
                why,
                "aws_access_key_id = ... and aws_secret_access_key = ..."
            );
            Err(bad(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_a_private_file_and_errors_do_not_quote_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id = AKIACANARY\naws_secret_access_key = CANARYSECRET\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = credentials_from_file(&path).unwrap();
        assert_eq!(c.key(), "AKIACANARY");
        assert_eq!(c.secret(), "CANARYSECRET");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = credentials_from_file(&path).err().unwrap().to_string();
        assert!(e.contains("0644") && !e.contains("CANARY"), "{e}");

        std::fs::write(&path, "aws_secret_access_key = CANARYSECRET\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = credentials_from_file(&path).err().unwrap().to_string();
        assert!(
            e.contains("aws_access_key_id") && !e.contains("CANARY"),
            "{e}"
        );
    }
}
