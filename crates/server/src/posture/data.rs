//! Checks of what the environment's database and keyring hold: KEK versions, accounts, API
//! keys, custom policies, the audit trail, and PostgreSQL's connection and role.

use std::path::Path;

use carevault_store::{ApiKeyRow, AuditQuery, PolicyRow, PrincipalRow, Store};

use super::{
    ACCOUNTS_ADMINS, ACCOUNTS_INACTIVE, API_KEYS_CIDRS, API_KEYS_EXPIRY, AUDIT_CHAIN,
    AUDIT_CHECKPOINT, BACKUP_FRESHNESS, DATABASE_ROLE, DATABASE_TLS, Finding, KEYS_KEK_AGE,
    KEYS_VERSIONS, POLICIES_BREADTH,
};
use crate::audit::Audit;
use crate::config::{Config, Database, Tier};
use crate::environment::Environment;
use crate::keyring::{KeyStatus, Keyring};

const DAY_SECS: i64 = 86_400;
/// API keys living longer than this are reported.
pub const API_KEY_MAX_DAYS: i64 = 366;
/// A backup older than this is reported (a daily backup, with an hour's slack).
pub const BACKUP_MAX_AGE_HOURS: i64 = 26;
/// The audit events the posture check recomputes: those after each node's last checkpoint
/// signed more than this long ago (a daily run, with slack).
pub const RECENT_AUDIT_HOURS: i64 = 26;
/// More administrators than this are reported (admin rights should be few).
pub const MAX_ADMINS: usize = 5;

/// The checks that read the environment. `backups`: a directory of backup archives, if known.
pub async fn run(
    config: &Config,
    env: &Environment,
    audit: &Audit,
    backups: Option<&Path>,
    now_us: i64,
) -> Vec<Finding> {
    let now = now_us.div_euclid(1_000_000);
    let mut out = keys(config, &env.keyring, now).await;
    out.extend(accounts(config, &*env.store, now).await);
    out.extend(api_keys(&*env.store, now).await);
    out.push(policies(&*env.store).await);
    out.extend(audit_trail(config, &*env.store, audit, now_us).await);
    out.extend(database(config).await);
    out.push(backup(backups, now));
    out
}

async fn keys(config: &Config, keyring: &Keyring, now: i64) -> Vec<Finding> {
    let status = match keyring.status().await {
        Ok(s) => s,
        Err(e) => {
            let found = format!(
                "the keyring's status cannot be read: {}",
                e.describe().message
            );
            return vec![
                KEYS_KEK_AGE.fail(
                    found.clone(),
                    "check the key provider and keys/keyring.json",
                ),
                KEYS_VERSIONS.fail(found, "check the key provider and keys/keyring.json"),
            ];
        }
    };
    let rotation_days = i64::try_from(config.posture.kek_rotation_days).unwrap_or(i64::MAX);
    kek_findings(&status, rotation_days, now)
}

/// `keys.kek_age` and `keys.versions` from the keyring's status at `now` (unix seconds).
pub fn kek_findings(status: &KeyStatus, rotation_days: i64, now: i64) -> Vec<Finding> {
    let active = status
        .versions
        .iter()
        .find(|v| v.version == status.active_version);
    let age_days = active
        .and_then(|v| crate::clock::parse_instant(&v.created_at))
        .map(|us| (now - us.div_euclid(1_000_000)).div_euclid(DAY_SECS));
    let age = match age_days {
        None => KEYS_KEK_AGE.fail(
            format!(
                "the active KEK version {} has no record",
                status.active_version
            ),
            "check keys/keyring.json against the key provider",
        ),
        Some(days) if days > rotation_days => KEYS_KEK_AGE.warn(
            format!(
                "KEK version {} is {days} days old (rotation period {rotation_days} days)",
                status.active_version
            ),
            "carevault key rotate (re-wraps data keys in the background)",
        ),
        Some(days) => KEYS_KEK_AGE.pass(format!(
            "KEK version {} is {days} days old (rotation period {rotation_days} days)",
            status.active_version
        )),
    };
    let broken: Vec<String> = status
        .versions
        .iter()
        .filter(|v| matches!(v.state, "missing" | "destroy-failed"))
        .map(|v| format!("v{} {}", v.version, v.state))
        .collect();
    let retired_kept: Vec<String> = status
        .versions
        .iter()
        .filter(|v| v.state == "retired" && v.data_keys == 0)
        .map(|v| format!("v{}", v.version))
        .collect();
    let unused_old: Vec<String> = status
        .versions
        .iter()
        .filter(|v| v.state == "decrypt-only" && v.data_keys == 0)
        .map(|v| format!("v{}", v.version))
        .collect();
    let versions = if !broken.is_empty() {
        KEYS_VERSIONS.fail(
            format!("KEK versions in a bad state: {}", broken.join(", ")),
            "restore the missing KEK files or token objects from a backup; re-run \
             `carevault key destroy` for a failed destruction",
        )
    } else if !retired_kept.is_empty() {
        KEYS_VERSIONS.warn(
            format!(
                "retired KEK versions still held: {}",
                retired_kept.join(", ")
            ),
            "carevault key destroy VERSION for each",
        )
    } else if !unused_old.is_empty() && status.rewrap_remaining == 0 {
        KEYS_VERSIONS.warn(
            format!(
                "old KEK versions wrap no data key but still decrypt: {}",
                unused_old.join(", ")
            ),
            format!(
                "carevault key min-version {} and then carevault key destroy the older ones",
                status.active_version
            ),
        )
    } else {
        KEYS_VERSIONS.pass(format!(
            "{} KEK version(s); minimum decryption version {}; {} destroyed",
            status.versions.len(),
            status.min_decrypt_version,
            status
                .versions
                .iter()
                .filter(|v| v.state == "destroyed")
                .count()
        ))
    };
    vec![age, versions]
}

/// When each account last logged in (unix seconds), from the audit trail.
async fn last_login(store: &dyn Store, principal: &PrincipalRow) -> Option<i64> {
    let events = store
        .audit_search(AuditQuery {
            principal: Some(principal.id.clone()),
            action: Some(carevault_audit::AuditAction::Login.as_str().to_owned()),
            outcome: Some("success".to_owned()),
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .ok()?;
    events.first().map(|e| e.time_us.div_euclid(1_000_000))
}

/// Accounts (enabled) whose last login, or creation if they never logged in, is older than the
/// inactivity limit.
pub async fn inactive_accounts(
    config: &Config,
    store: &dyn Store,
    now: i64,
) -> Result<Vec<(PrincipalRow, i64)>, carevault_store::StoreError> {
    let limit = i64::try_from(config.posture.inactive_days).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for p in store.principals().await? {
        if p.disabled {
            continue;
        }
        let seen = last_login(store, &p).await.unwrap_or(p.created_at);
        let days = (now - seen).div_euclid(DAY_SECS);
        if days > limit {
            out.push((p, days));
        }
    }
    Ok(out)
}

async fn accounts(config: &Config, store: &dyn Store, now: i64) -> Vec<Finding> {
    let principals = match store.principals().await {
        Ok(p) => p,
        Err(e) => {
            let found = format!("accounts cannot be read: {e}");
            return vec![
                ACCOUNTS_INACTIVE.fail(found.clone(), "check the database"),
                ACCOUNTS_ADMINS.fail(found, "check the database"),
            ];
        }
    };
    let inactive = match inactive_accounts(config, store, now).await {
        Ok(list) if list.is_empty() => ACCOUNTS_INACTIVE.pass(format!(
            "{} enabled account(s), none unused for more than {} days (accounts do not expire: \
             this limit stands in for an expiry)",
            principals.iter().filter(|p| !p.disabled).count(),
            config.posture.inactive_days
        )),
        Ok(list) => ACCOUNTS_INACTIVE.warn(
            format!(
                "unused for more than {} days: {}",
                config.posture.inactive_days,
                list.iter()
                    .map(|(p, days)| format!("{} ({days} days)", p.username))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "carevault user disable USERNAME (carevault doctor --fix does it, after confirmation)",
        ),
        Err(e) => ACCOUNTS_INACTIVE.fail(
            format!("accounts cannot be read: {e}"),
            "check the database",
        ),
    };
    vec![inactive, admins_finding(&principals)]
}

/// `accounts.admins` from the accounts.
pub fn admins_finding(principals: &[PrincipalRow]) -> Finding {
    let admins: Vec<&str> = principals
        .iter()
        .filter(|p| !p.disabled && p.roles.iter().any(|r| r == "admin"))
        .map(|p| p.username.as_str())
        .collect();
    match admins.len() {
        0 => ACCOUNTS_ADMINS.fail(
            "no enabled administrator",
            "carevault admin recover --user admin (on the server machine)",
        ),
        1 => ACCOUNTS_ADMINS.warn(
            format!("one administrator ({}): crypto-shredding needs a second admin's approval, and a lost admin needs recovery", admins.join(", ")),
            "carevault user create --role admin NAME for a second, named administrator",
        ),
        n if n > MAX_ADMINS => ACCOUNTS_ADMINS.warn(
            format!("{n} administrators: {}", admins.join(", ")),
            format!("keep admin rights to at most {MAX_ADMINS} people: carevault user disable the rest"),
        ),
        n => ACCOUNTS_ADMINS.pass(format!("{n} administrators: {}", admins.join(", "))),
    }
}

async fn api_keys(store: &dyn Store, now: i64) -> Vec<Finding> {
    let keys = match store.api_keys().await {
        Ok(k) => k,
        Err(e) => {
            let found = format!("API keys cannot be read: {e}");
            return vec![
                API_KEYS_EXPIRY.fail(found.clone(), "check the database"),
                API_KEYS_CIDRS.fail(found, "check the database"),
            ];
        }
    };
    api_key_findings(&keys, now)
}

/// `api_keys.expiry` and `api_keys.cidrs` from the API keys at `now` (unix seconds); revoked and
/// expired keys are left out.
pub fn api_key_findings(keys: &[ApiKeyRow], now: i64) -> Vec<Finding> {
    let live: Vec<_> = keys
        .iter()
        .filter(|k| !k.revoked && k.expires_at > now)
        .collect();
    let long: Vec<String> = live
        .iter()
        .filter(|k| k.expires_at - k.created_at > API_KEY_MAX_DAYS * DAY_SECS)
        .map(|k| k.name.clone())
        .collect();
    let expiry = if long.is_empty() {
        API_KEYS_EXPIRY.pass(format!(
            "{} live API key(s), each expiring within {API_KEY_MAX_DAYS} days of its creation",
            live.len()
        ))
    } else {
        API_KEYS_EXPIRY.warn(
            format!(
                "API keys living longer than {API_KEY_MAX_DAYS} days: {}",
                long.join(", ")
            ),
            "carevault key revoke NAME and create a replacement with a shorter --expires-in-days",
        )
    };
    let open: Vec<String> = live
        .iter()
        // A key bound to a client certificate is usable only by the holder of its private key,
        // wherever they are: as fenced as one bound to networks.
        .filter(|k| {
            k.owner_id.is_none() && k.allowed_cidrs.is_empty() && k.client_cert_sha256.is_none()
        })
        .map(|k| k.name.clone())
        .collect();
    let cidrs = if open.is_empty() {
        API_KEYS_CIDRS.pass(format!(
            "{} live service key(s), each bound to networks or a client certificate",
            live.iter().filter(|k| k.owner_id.is_none()).count()
        ))
    } else {
        API_KEYS_CIDRS.warn(
            format!("service keys usable from any address: {}", open.join(", ")),
            "recreate them with --allow-cidr for the networks the service runs in, or with \
             --client-cert for the service's certificate (tls.client_ca)",
        )
    };
    vec![expiry, cidrs]
}

async fn policies(store: &dyn Store) -> Finding {
    let rows = match store.policies().await {
        Ok((_, rows)) => rows,
        Err(e) => {
            return POLICIES_BREADTH.fail(
                format!("policies cannot be read: {e}"),
                "check the database",
            );
        }
    };
    policies_finding(&rows)
}

/// `policies.breadth` from the custom policy files.
pub fn policies_finding(rows: &[PolicyRow]) -> Finding {
    let mut invalid = Vec::new();
    let mut broad = Vec::new();
    for row in rows {
        if crate::authz::check_policy_text(&row.text).is_err() {
            invalid.push(row.name.clone());
        } else if policy_permits_broadly(&row.text) {
            broad.push(row.name.clone());
        }
    }
    if !invalid.is_empty() {
        return POLICIES_BREADTH.fail(
            format!("custom policies that do not validate against the schema: {}", invalid.join(", ")),
            "carevault policy test FILE shows why; fix or remove them (carevault policy remove NAME)",
        );
    }
    if !broad.is_empty() {
        return POLICIES_BREADTH.fail(
            format!(
                "custom policies that permit any principal on any resource without a condition: {}",
                broad.join(", ")
            ),
            "constrain the principal (a role or group), the resource, or add a when clause",
        );
    }
    POLICIES_BREADTH.pass(format!(
        "{} custom policy file(s), all valid and constrained",
        rows.len()
    ))
}

/// A `permit` with no principal constraint, no resource constraint and no condition: it grants
/// its actions to everyone on everything.
pub fn policy_permits_broadly(text: &str) -> bool {
    use cedar_policy::{Effect, PrincipalConstraint, ResourceConstraint};
    let Ok(set) = text.parse::<cedar_policy::PolicySet>() else {
        return false;
    };
    set.policies().any(|p| {
        p.effect() == Effect::Permit
            && matches!(p.principal_constraint(), PrincipalConstraint::Any)
            && matches!(p.resource_constraint(), ResourceConstraint::Any)
            && p.to_json()
                .ok()
                .and_then(|j| {
                    j.get("conditions")
                        .map(|c| c.as_array().is_none_or(Vec::is_empty))
                })
                .unwrap_or(false)
    })
}

async fn audit_trail(
    config: &Config,
    store: &dyn Store,
    audit: &Audit,
    now_us: i64,
) -> Vec<Finding> {
    let unreadable = |e: carevault_store::StoreError| {
        let found = format!("the audit trail cannot be read: {e}");
        vec![
            AUDIT_CHAIN.fail(found.clone(), "check the database"),
            AUDIT_CHECKPOINT.fail(found, "check the database"),
        ]
    };
    let key = match carevault_audit::parse_public_key(&audit.public_key()) {
        Ok(k) => k,
        Err(e) => {
            return vec![AUDIT_CHAIN.fail(format!("the audit key: {e}"), "check the keyring")];
        }
    };
    // The recent trail, read a page at a time: the whole one grows without bound and is
    // `carevault audit verify`'s to check.
    let scope = carevault_store::TrailScope::Since(now_us - RECENT_AUDIT_HOURS * 3_600_000_000);
    let report = match carevault_store::verify_audit_trail(store, key, scope).await {
        Ok(Ok(r)) => r,
        Ok(Err(breach)) => {
            return vec![
                AUDIT_CHAIN.fail(
                    format!("the audit trail is BROKEN: {breach}"),
                    "treat it as an incident: preserve the database, compare with an export or \
                     backup (carevault audit verify), and investigate",
                ),
                AUDIT_CHECKPOINT.fail("the trail does not verify", "see audit.chain"),
            ];
        }
        Err(e) => return unreadable(e),
    };
    let checkpoints = match store.audit_checkpoints().await {
        Ok(c) => c,
        Err(e) => return unreadable(e),
    };
    let verified: u64 = report
        .nodes
        .iter()
        .map(|n| n.events + 1 - n.first_verified)
        .sum();
    let chain = AUDIT_CHAIN.pass(format!(
        "the last {RECENT_AUDIT_HOURS} hours' {verified} events and all {} checkpoints on {} \
         node(s) verify against the environment's key",
        checkpoints.len(),
        report.nodes.len()
    ));
    let unsigned = report
        .nodes
        .iter()
        .find(|n| config.node_id == *n.node)
        .map(|n| n.unsigned_tail);
    let last_checkpoint_us = checkpoints
        .iter()
        .filter(|c| config.node_id == *c.node)
        .map(|c| c.time_us)
        .max();
    let limit_secs = config
        .audit_max_unsigned
        .map_or(3600, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let checkpoint = checkpoint_finding(
        config.node_id.as_str(),
        unsigned,
        last_checkpoint_us,
        limit_secs,
        now_us,
    );
    vec![chain, checkpoint]
}

/// `audit.checkpoint` for `node`: `unsigned` is how many of its events (None: it has none) no
/// signed checkpoint covers yet; they fail once the last checkpoint is older than `limit_secs`.
pub fn checkpoint_finding(
    node: &str,
    unsigned: Option<u64>,
    last_checkpoint_us: Option<i64>,
    limit_secs: i64,
    now_us: i64,
) -> Finding {
    match unsigned {
        None => AUDIT_CHECKPOINT.pass(format!("no events yet on node {node}")),
        Some(0) => AUDIT_CHECKPOINT.pass(format!(
            "every event of node {node} is covered by a signed checkpoint"
        )),
        Some(n) => {
            let age = (now_us - last_checkpoint_us.unwrap_or(0)).div_euclid(1_000_000);
            if age > limit_secs {
                AUDIT_CHECKPOINT.fail(
                    format!(
                        "{n} events of node {node} unsigned; the last checkpoint is {age} s old"
                    ),
                    "start the server (it signs every 10 s) and check its log for checkpoint failures",
                )
            } else {
                AUDIT_CHECKPOINT.pass(format!("the last checkpoint of node {node} is {age} s old"))
            }
        }
    }
}

/// `sslmode` from a PostgreSQL URL's query (libpq's default here is `disable`).
fn sslmode(url: &str) -> &str {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("sslmode="))
        .unwrap_or("disable")
}

pub(crate) fn host_is_loopback(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        // No host: a Unix socket.
        None => true,
        // A `postgres://` URL's host is opaque to the url crate: an address comes as a name.
        Some(url::Host::Domain(name)) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
    }
}

async fn database(config: &Config) -> Vec<Finding> {
    let Database::Postgres(pg) = &config.database else {
        return vec![
            DATABASE_TLS.pass("SQLite in the data directory: no network connection"),
            DATABASE_ROLE.pass("SQLite: no database roles"),
        ];
    };
    let tls = database_tls_finding(&pg.url, config.posture.tier);
    let role = match carevault_store::PostgresStore::connect_existing(&pg.options()).await {
        Err(e) => DATABASE_ROLE.fail(
            format!("cannot connect to the database: {e}"),
            "check database.url, the password and that PostgreSQL runs",
        ),
        Ok(store) => match store.role_rights().await {
            Err(e) => DATABASE_ROLE.fail(
                format!("the role's rights cannot be read: {e}"),
                "check the database",
            ),
            Ok((superuser, createrole, createdb)) => role_finding(superuser, createrole, createdb),
        },
    };
    vec![tls, role]
}

/// `database.tls` from the PostgreSQL URL (`sslmode` and the host).
pub fn database_tls_finding(url: &str, tier: Tier) -> Finding {
    let mode = sslmode(url);
    match mode {
        "verify-full" => DATABASE_TLS.pass("sslmode=verify-full"),
        "require" => DATABASE_TLS.fail_in(
            tier,
            "sslmode=require: encrypted, but the server's certificate is not checked",
            "use sslmode=verify-full&sslrootcert=CA.pem (docs/postgresql.md)",
        ),
        _ if host_is_loopback(url) => DATABASE_TLS
            .pass("sslmode=disable to a loopback address (traffic stays on the machine)"),
        _ => DATABASE_TLS.fail(
            format!("sslmode={mode} to another machine: database traffic in clear"),
            "use sslmode=verify-full&sslrootcert=CA.pem (docs/postgresql.md)",
        ),
    }
}

/// `database.role` from the role's attributes.
pub fn role_finding(superuser: bool, createrole: bool, createdb: bool) -> Finding {
    let rights: Vec<&str> = [
        (superuser, "SUPERUSER"),
        (createrole, "CREATEROLE"),
        (createdb, "CREATEDB"),
    ]
    .iter()
    .filter(|(has, _)| *has)
    .map(|(_, name)| *name)
    .collect();
    if rights.is_empty() {
        DATABASE_ROLE.pass("the role has no administrative rights")
    } else {
        DATABASE_ROLE.warn(
            format!("the role has {}", rights.join(", ")),
            "connect as a role that owns only CareVault's schema: ALTER ROLE name NOSUPERUSER NOCREATEROLE NOCREATEDB",
        )
    }
}

/// `backup.freshness`: the newest file in `backups` at `now` (unix seconds).
pub fn backup(backups: Option<&Path>, now: i64) -> Finding {
    let Some(dir) = backups else {
        return BACKUP_FRESHNESS.warn(
            "no backup location given, so no backup was found",
            "take backups (carevault backup create) into a directory and pass it: carevault doctor --backups DIR",
        );
    };
    let newest = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .filter_map(|m| m.modified().ok())
            .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .max()
    });
    match newest {
        None => BACKUP_FRESHNESS.fail(
            format!("no backup in {}", dir.display()),
            "carevault backup create --out DIR/NAME (daily; see docs/backups.md)",
        ),
        Some(t) if now - t > BACKUP_MAX_AGE_HOURS * 3600 => BACKUP_FRESHNESS.warn(
            format!(
                "the newest backup in {} is {} hours old",
                dir.display(),
                (now - t) / 3600
            ),
            "carevault backup create (daily), and carevault backup verify it",
        ),
        Some(t) => BACKUP_FRESHNESS.pass(format!(
            "the newest backup in {} is {} hours old (verify it: carevault backup verify)",
            dir.display(),
            (now - t) / 3600
        )),
    }
}
