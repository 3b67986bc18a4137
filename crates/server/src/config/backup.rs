//! The `[backup]` keys: scheduled backups the server takes itself (off unless
//! `backup.schedule` is set), where they go, who can open them and which are kept.

use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::file::BackupSection;

/// Scheduled backups: every `every`, into `dir`, encrypted to `recipients` or the passphrase
/// in `passphrase_file`, pruned by `keep`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSchedule {
    pub dir: PathBuf,
    pub every: Duration,
    pub keep: Keep,
    /// age X25519 recipients (`age1...`, public keys: not secrets). Checked in full when the
    /// server starts (the backup crate parses them).
    pub recipients: Vec<String>,
    pub passphrase_file: Option<PathBuf>,
    /// How often the newest backup is verified in the background (None: never).
    pub verify_every: Option<Duration>,
    /// Where each scheduled backup is copied once written.
    pub offsite: Vec<OffsiteTarget>,
}

/// An off-site copy target of scheduled backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsiteTarget {
    /// A directory (a mounted NAS, another disk).
    Dir(PathBuf),
    /// An S3-compatible object store.
    S3(S3Target),
}

impl OffsiteTarget {
    /// The target's kind, a metric label and the key of its status: `dir` or `s3`.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Dir(_) => "dir",
            Self::S3(_) => "s3",
        }
    }
}

/// An S3-compatible bucket: path-style requests to `endpoint`, objects named `prefix` +
/// the backup's file name. The credentials come from `credentials_file` or the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), read when the server starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Target {
    pub endpoint: url::Url,
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub credentials_file: Option<PathBuf>,
}

/// A retention rule such as `28 daily + 12 monthly`: for each term, the newest backup of each
/// of the N most recent periods (days, months, ...) that hold one is kept. The newest backup
/// is always kept; every other backup is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    pub terms: Vec<(u32, Period)>,
}

/// The period of a retention term; `Last` counts backups, not periods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

pub const DEFAULT_KEEP: &str = "28 daily + 12 monthly";

impl Keep {
    /// Parse `N period [+ N period ...]` (periods: last, hourly, daily, weekly, monthly,
    /// yearly; each at most once; N from 1 to 10000).
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = "expected terms like \"28 daily + 12 monthly\" (N last, hourly, daily, \
                        weekly, monthly or yearly, joined by +)";
        let mut terms: Vec<(u32, Period)> = Vec::new();
        for term in text.split('+') {
            let mut words = term.split_whitespace();
            let (Some(n), Some(period), None) = (words.next(), words.next(), words.next()) else {
                return Err(expected.to_owned());
            };
            let n = n
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| format!("{expected}; N is 1 to 10000"))?;
            let period = match period {
                "last" => Period::Last,
                "hourly" => Period::Hourly,
                "daily" => Period::Daily,
                "weekly" => Period::Weekly,
                "monthly" => Period::Monthly,
                "yearly" => Period::Yearly,
                _ => return Err(expected.to_owned()),
            };
            if terms.iter().any(|(_, p)| *p == period) {
                return Err(format!("{expected}; each period at most once"));
            }
            terms.push((n, period));
        }
        Ok(Self { terms })
    }
}

/// `6h`, `30m`, `1d`: minutes, hours or days; from 1 minute to 31 days.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let expected = "expected an interval like \"6h\" (m, h or d), from 1m to 31d";
    let text = text.trim();
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| expected.to_owned())?;
    let secs = match unit {
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| (60..=31 * 86_400).contains(s))
    .ok_or_else(|| expected.to_owned())?;
    Ok(Duration::from_secs(secs))
}

/// The `[backup]` section: None unless `backup.schedule` is set; the other keys then need it.
pub(super) fn backup_schedule(
    section: BackupSection,
) -> Result<Option<BackupSchedule>, ConfigError> {
    let Some(schedule) = section.schedule.clone() else {
        let mut stray = vec![
            ("backup.dir", section.dir.is_some()),
            ("backup.keep", section.keep.is_some()),
            ("backup.recipients", section.recipients.is_some()),
            ("backup.passphrase_file", section.passphrase_file.is_some()),
            ("backup.verify_schedule", section.verify_schedule.is_some()),
            ("backup.offsite_dir", section.offsite_dir.is_some()),
            ("backup.s3_endpoint", section.s3_endpoint.is_some()),
        ];
        stray.extend(s3_keys(&section));
        return refuse_stray(
            &stray,
            "only applies with backup.schedule (scheduled backups are off without it)",
        )
        .map(|()| None);
    };
    let every = parse_interval(&schedule).map_err(|e| ConfigError::new("backup.schedule", e))?;
    let dir = section
        .dir
        .clone()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| {
            ConfigError::new(
                "backup.dir",
                "required with backup.schedule: the directory scheduled backups are written to",
            )
        })?;
    let keep = Keep::parse(section.keep.as_deref().unwrap_or(DEFAULT_KEEP))
        .map_err(|e| ConfigError::new("backup.keep", e))?;
    let recipients: Vec<String> = section
        .recipients
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = recipients.iter().find(|r| !r.starts_with("age1")) {
        return Err(ConfigError::new(
            "backup.recipients",
            format!(
                "not an age X25519 recipient (age1...): {}",
                bad.chars().take(80).collect::<String>()
            ),
        ));
    }
    let passphrase_file = section
        .passphrase_file
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    let verify_every = section
        .verify_schedule
        .as_deref()
        .map(parse_interval)
        .transpose()
        .map_err(|e| ConfigError::new("backup.verify_schedule", e))?;
    let offsite = offsite_targets(&section)?;
    match (recipients.is_empty(), &passphrase_file) {
        (true, None) => Err(ConfigError::new(
            "backup.recipients",
            "required with backup.schedule (or backup.passphrase_file): who can open the backups",
        )),
        (false, Some(_)) => Err(ConfigError::new(
            "backup.passphrase_file",
            "age encrypts to recipients or to a passphrase, not both; set one of backup.recipients and backup.passphrase_file",
        )),
        _ => Ok(Some(BackupSchedule {
            dir,
            every,
            keep,
            recipients,
            passphrase_file,
            verify_every,
            offsite,
        })),
    }
}

/// The `backup.s3_*` keys that only apply with `backup.s3_endpoint`, and whether each is set.
fn s3_keys(section: &BackupSection) -> [(&'static str, bool); 4] {
    [
        ("backup.s3_bucket", section.s3_bucket.is_some()),
        ("backup.s3_region", section.s3_region.is_some()),
        ("backup.s3_prefix", section.s3_prefix.is_some()),
        (
            "backup.s3_credentials_file",
            section.s3_credentials_file.is_some(),
        ),
    ]
}

/// The first key of `keys` that is set, refused with `why`.
fn refuse_stray(keys: &[(&'static str, bool)], why: &str) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(ConfigError::new(*key, why)),
        None => Ok(()),
    }
}

/// `backup.offsite_dir` and the `backup.s3_*` keys.
fn offsite_targets(section: &BackupSection) -> Result<Vec<OffsiteTarget>, ConfigError> {
    let mut out = Vec::new();
    if let Some(dir) = &section.offsite_dir {
        if dir.as_os_str().is_empty() || dir.is_relative() {
            return Err(ConfigError::new(
                "backup.offsite_dir",
                "expected an absolute directory path",
            ));
        }
        if section.dir.as_ref() == Some(dir) {
            return Err(ConfigError::new(
                "backup.offsite_dir",
                "is backup.dir itself; name a directory on other storage",
            ));
        }
        out.push(OffsiteTarget::Dir(dir.clone()));
    }
    let Some(endpoint) = &section.s3_endpoint else {
        return refuse_stray(&s3_keys(section), "only applies with backup.s3_endpoint")
            .map(|()| out);
    };
    let endpoint = s3_endpoint(endpoint)?;
    let bucket = section
        .s3_bucket
        .clone()
        .filter(|b| {
            (3..=63).contains(&b.len())
                && b.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        })
        .ok_or_else(|| {
            ConfigError::new(
                "backup.s3_bucket",
                "required with backup.s3_endpoint: a bucket name (3 to 63 of a-z, 0-9, '-', '.')",
            )
        })?;
    let region = section
        .s3_region
        .clone()
        .unwrap_or_else(|| "us-east-1".to_owned());
    if region.is_empty()
        || !region
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(ConfigError::new(
            "backup.s3_region",
            "expected a region name such as us-east-1",
        ));
    }
    let prefix = section.s3_prefix.clone().unwrap_or_default();
    if prefix.starts_with('/') || prefix.len() > 512 || prefix.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "backup.s3_prefix",
            "expected a key prefix such as carevault/ (no leading /, at most 512 bytes)",
        ));
    }
    out.push(OffsiteTarget::S3(S3Target {
        endpoint,
        bucket,
        region,
        prefix,
        credentials_file: section
            .s3_credentials_file
            .clone()
            .filter(|p| !p.as_os_str().is_empty()),
    }));
    Ok(out)
}

/// An `https://` endpoint, or `http://` on a loopback address only (a test store, a local
/// gateway): the backups are encrypted, but the request signatures and object names are not.
fn s3_endpoint(text: &str) -> Result<url::Url, ConfigError> {
    let bad = |why: &str| ConfigError::new("backup.s3_endpoint", why);
    let url = url::Url::parse(text)
        .map_err(|_| bad("expected a URL such as https://s3.eu-west-1.amazonaws.com"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(bad("plain http only on a loopback address; use https://")),
        _ => return Err(bad("expected an https:// URL")),
    }
    if url.query().is_some() || url.fragment().is_some() || url.host().is_none() {
        return Err(bad(
            "expected a URL of a host (and port), without query or fragment",
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(change: impl FnOnce(&mut BackupSection)) -> Result<BackupSchedule, ConfigError> {
        let mut s = BackupSection {
            schedule: Some("6h".into()),
            dir: Some("/var/backups/carevault".into()),
            recipients: Some(
                "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into(),
            ),
            ..BackupSection::default()
        };
        change(&mut s);
        backup_schedule(s).map(|b| b.unwrap())
    }

    #[test]
    fn offsite_and_verify_keys_are_checked_naming_the_key() {
        let b = section(|s| {
            s.verify_schedule = Some("7d".into());
            s.offsite_dir = Some("/mnt/nas/carevault".into());
            s.s3_endpoint = Some("http://127.0.0.1:9000".into());
            s.s3_bucket = Some("clinic-backups".into());
        })
        .unwrap();
        assert_eq!(b.verify_every, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(b.offsite.len(), 2);
        let OffsiteTarget::S3(s3) = &b.offsite[1] else {
            panic!("{b:?}");
        };
        assert_eq!((s3.region.as_str(), s3.prefix.as_str()), ("us-east-1", ""));
        assert_eq!(section(|_| {}).unwrap().offsite, vec![]);
        type Change = fn(&mut BackupSection);
        let cases: [(Change, &str); 8] = [
            (
                |s| s.verify_schedule = Some("weekly".into()),
                "backup.verify_schedule",
            ),
            (|s| s.offsite_dir = Some("nas".into()), "backup.offsite_dir"),
            (|s| s.offsite_dir = s.dir.clone(), "backup.offsite_dir"),
            (|s| s.s3_prefix = Some("x/".into()), "backup.s3_prefix"),
            (
                |s| s.s3_endpoint = Some("http://s3.example.org".into()),
                "backup.s3_endpoint",
            ),
            (
                |s| s.s3_endpoint = Some("ftp://127.0.0.1".into()),
                "backup.s3_endpoint",
            ),
            (
                |s| s.s3_endpoint = Some("https://s3.example.org".into()),
                "backup.s3_bucket",
            ),
            (
                |s| {
                    s.s3_endpoint = Some("https://s3.example.org".into());
                    s.s3_bucket = Some("Not_A_Bucket".into());
                },
                "backup.s3_bucket",
            ),
        ];
        for (change, key) in cases {
            let e = section(change).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn intervals_parse_within_bounds() {
        assert_eq!(parse_interval("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("31d"), Ok(Duration::from_secs(31 * 86_400)));
        for bad in [
            "",
            "h",
            "6",
            "0m",
            "32d",
            "6 hours",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn keep_rules_parse_and_refuse_nonsense() {
        assert_eq!(
            Keep::parse("28 daily + 12 monthly").unwrap().terms,
            vec![(28, Period::Daily), (12, Period::Monthly)]
        );
        assert_eq!(
            Keep::parse("3 last+1 yearly").unwrap().terms,
            vec![(3, Period::Last), (1, Period::Yearly)]
        );
        for bad in [
            "",
            "daily",
            "28",
            "28 days",
            "0 daily",
            "2 daily + 3 daily",
            "28 daily 12 monthly",
            "28 daily +",
        ] {
            assert!(Keep::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
