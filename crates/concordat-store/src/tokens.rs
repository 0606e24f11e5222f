//! Personal access tokens: long-lived credentials for tools that store a password (Power
//! BI's scheduled refresh, an ODBC DSN), scoped to one partner, roles and purposes, that
//! expire and can be revoked.
//!
//! A token is `cct_<id>_<secret>`: the id names it in lists and revocations, the 256-bit
//! secret is shown once and kept only as its SHA-256. The register is an append-only
//! file of JSON lines (`<data_dir>/tokens/tokens.log`: a creation or a revocation per
//! line, each written whole and synced), so the CLI and a running server can both add to
//! it; the server rereads it when it changes.
//!
//! On a shared object store (replicas) each entry is one object under `tokens/`, named by
//! its time and a random id and written only if absent; every replica rereads the list
//! at most a second after it last did (and at once when a token it does not know is
//! presented), so a token created on one replica works on all, and a revocation takes
//! effect everywhere within a second.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use concordat_core::{ErrorKind, PartnerId, Purpose, Role};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// What every personal access token starts with.
pub const PREFIX: &str = "cct_";
/// Longest life of a token, days.
pub const MAX_DAYS: u32 = 366;

/// A token as the register keeps it (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenInfo {
    /// Its id (the part after `cct_` and before the secret).
    pub id: String,
    /// What its holder called it.
    pub name: String,
    /// The partner it acts for.
    pub partner: PartnerId,
    /// Who created it (a token subject, or `cli`).
    pub created_by: String,
    /// Roles it carries.
    pub roles: Vec<Role>,
    /// Purposes it may declare; empty means any its partner's agreements permit.
    pub purposes: Vec<Purpose>,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// When it stops working.
    pub expires: DateTime<Utc>,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<DateTime<Utc>>,
    /// SHA-256 of the secret, hex.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Entry {
    Create(TokenInfo),
    Revoke { id: String, at: DateTime<Utc> },
}

/// What a token is asked to be.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// A name for lists.
    pub name: String,
    /// The partner.
    pub partner: PartnerId,
    /// Who asks.
    pub created_by: String,
    /// Roles (at least one).
    pub roles: Vec<Role>,
    /// Purposes (empty: any).
    pub purposes: Vec<Purpose>,
    /// Days until it expires (1 to [`MAX_DAYS`]).
    pub days: u32,
}

/// The register of tokens.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    /// The register as last read, and the file length it was read at.
    cache: Mutex<(u64, Vec<TokenInfo>)>,
    /// The shared store holding the register, and what has been read of it.
    shared: Option<(crate::shared::Shared, Mutex<SharedRead>)>,
}

/// The shared register as last read: the entries by object name, the register they
/// describe, and when.
#[derive(Debug, Default)]
struct SharedRead {
    entries: std::collections::BTreeMap<String, Entry>,
    tokens: Vec<TokenInfo>,
    at: Option<std::time::Instant>,
}

/// How long a replica trusts its last reading of the shared register.
const SHARED_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Tokens {
    /// The register under a data directory (created when first written).
    pub fn open(data_dir: &Path) -> Tokens {
        Tokens {
            path: data_dir.join("tokens").join("tokens.log"),
            cache: Mutex::new((u64::MAX, Vec::new())),
            shared: None,
        }
    }

    /// The register where the store's durable state lives.
    pub fn at(location: &crate::shared::Location) -> Tokens {
        match location {
            crate::shared::Location::Local(dir) => Tokens::open(dir),
            crate::shared::Location::Shared(shared) => Tokens {
                path: PathBuf::new(),
                cache: Mutex::new((u64::MAX, Vec::new())),
                shared: Some((shared.clone(), Mutex::new(SharedRead::default()))),
            },
        }
    }

    /// Creates a token; returns the token text (shown once) and what is kept.
    pub fn create(&self, new: NewToken) -> Result<(String, TokenInfo), StoreError> {
        let bad = |m: &str| StoreError::refused(ErrorKind::InvalidInput, "bad_request", m);
        if new.roles.is_empty() {
            return Err(bad("a token needs at least one role"));
        }
        if new.days == 0 || new.days > MAX_DAYS {
            return Err(bad("days must be 1 to 366"));
        }
        let name: String = new.name.trim().chars().take(100).collect();
        if name.chars().any(char::is_control) {
            return Err(bad("the name may not contain control characters"));
        }
        let mut raw = [0u8; 44];
        rand::fill(&mut raw[..]);
        let id = hex::encode(&raw[..6]);
        let secret = hex::encode(&raw[12..]);
        let now = Utc::now();
        let info = TokenInfo {
            id: id.clone(),
            name,
            partner: new.partner,
            created_by: new.created_by,
            roles: new.roles,
            purposes: new.purposes,
            created: now,
            expires: now + chrono::Duration::days(i64::from(new.days)),
            revoked: None,
            sha256: hash(&secret),
        };
        self.append(&Entry::Create(info.clone()))?;
        Ok((format!("{PREFIX}{id}_{secret}"), info.shown()))
    }

    /// Revokes a token; `partner` limits it to that partner's tokens. Not found (or not
    /// the partner's) is the same answer.
    pub fn revoke(&self, id: &str, partner: Option<&PartnerId>) -> Result<TokenInfo, StoreError> {
        let found = self
            .list(partner)?
            .into_iter()
            .find(|t| t.id == id && t.revoked.is_none())
            .ok_or_else(|| {
                StoreError::refused(ErrorKind::NotFound, "not_found", "no such token")
            })?;
        let at = Utc::now();
        self.append(&Entry::Revoke {
            id: found.id.clone(),
            at,
        })?;
        Ok(TokenInfo {
            revoked: Some(at),
            ..found
        })
    }

    /// Every token (of a partner), without secrets' hashes.
    pub fn list(&self, partner: Option<&PartnerId>) -> Result<Vec<TokenInfo>, StoreError> {
        self.with_all(|all| {
            all.iter()
                .filter(|t| partner.is_none_or(|p| &t.partner == p))
                .map(|t| t.clone().shown())
                .collect()
        })
    }

    /// The token a presented text is, if it is one, unrevoked and unexpired.
    pub fn verify(&self, text: &str) -> Option<TokenInfo> {
        let rest = text.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let presented = hash(secret);
        let now = Utc::now();
        let mut t = self
            .with_all(|all| all.iter().find(|t| t.id == id).cloned())
            .ok()?;
        if t.is_none() && self.shared.is_some() {
            // Perhaps just created on another replica.
            self.forget_shared_reading();
            t = self
                .with_all(|all| all.iter().find(|t| t.id == id).cloned())
                .ok()?;
        }
        let t = t?;
        // Constant-time comparison of the hashes.
        let same = t.sha256.len() == presented.len()
            && t.sha256
                .bytes()
                .zip(presented.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        (same && t.revoked.is_none() && t.expires > now).then(|| t.shown())
    }

    /// Calls `f` with the register as it is now (reread only when the file changed).
    fn with_all<R>(&self, f: impl FnOnce(&[TokenInfo]) -> R) -> Result<R, StoreError> {
        if let Some((shared, read)) = &self.shared {
            let mut read = read
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if read.at.is_none_or(|at| at.elapsed() > SHARED_FRESH) {
                let known: Vec<String> = read.entries.keys().cloned().collect();
                let new = shared.block_on(|store| async move {
                    let mut new = Vec::new();
                    for (key, _) in store.list("tokens", None).await? {
                        if known.binary_search(&key).is_err()
                            && let Some(b) = store.get(&key).await?
                        {
                            new.push((key, b));
                        }
                    }
                    Ok::<_, StoreError>(new)
                })?;
                let grew = !new.is_empty();
                for (key, bytes) in new {
                    match serde_json::from_slice::<Entry>(&bytes) {
                        Ok(e) => {
                            read.entries.insert(key, e);
                        }
                        Err(e) => tracing::warn!(error = %e, "token register entry skipped"),
                    }
                }
                if grew {
                    read.tokens = replay(read.entries.values());
                }
                read.at = Some(std::time::Instant::now());
            }
            return Ok(f(&read.tokens));
        }
        let len = match std::fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::internal(e)),
        };
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.0 != len {
            let text = if len == 0 {
                String::new()
            } else {
                std::fs::read_to_string(&self.path).map_err(StoreError::internal)?
            };
            // A line cut by a crash mid-write is not an entry.
            let entries: Vec<Entry> = text
                .lines()
                .filter(|l| l.ends_with('}'))
                .filter_map(|line| match serde_json::from_str::<Entry>(line) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "token register line skipped");
                        None
                    }
                })
                .collect();
            *cache = (len, replay(entries.iter()));
        }
        Ok(f(&cache.1))
    }

    fn forget_shared_reading(&self) {
        if let Some((_, read)) = &self.shared {
            read.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .at = None;
        }
    }

    fn append(&self, entry: &Entry) -> Result<(), StoreError> {
        if let Some((shared, _)) = &self.shared {
            let key = format!(
                "tokens/{:013}-{}.json",
                Utc::now().timestamp_millis(),
                uuid::Uuid::new_v4().simple()
            );
            let bytes =
                bytes::Bytes::from(serde_json::to_vec(entry).map_err(StoreError::internal)?);
            let created =
                shared.block_on(|store| async move { store.put_new(&key, bytes).await })?;
            if !created {
                return Err(StoreError::Internal(
                    "a token entry's name was taken".into(),
                ));
            }
            self.forget_shared_reading();
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(StoreError::internal)?;
        }
        let mut line = serde_json::to_vec(entry).map_err(StoreError::internal)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(StoreError::internal)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
        }
        // One write of the whole line: appends from the CLI and the server do not interleave.
        f.write_all(&line).map_err(StoreError::internal)?;
        f.sync_data().map_err(StoreError::internal)?;
        Ok(())
    }
}

/// The register that the entries describe. Revocations apply whatever their order
/// (replicas' clocks may differ slightly).
fn replay<'a>(entries: impl Iterator<Item = &'a Entry> + Clone) -> Vec<TokenInfo> {
    let mut tokens: Vec<TokenInfo> = entries
        .clone()
        .filter_map(|e| match e {
            Entry::Create(t) => Some(t.clone()),
            Entry::Revoke { .. } => None,
        })
        .collect();
    for e in entries {
        if let Entry::Revoke { id, at } = e
            && let Some(t) = tokens.iter_mut().find(|t| &t.id == id)
        {
            t.revoked = Some(*at);
        }
    }
    tokens
}

impl TokenInfo {
    /// Without the secret's hash.
    fn shown(mut self) -> TokenInfo {
        self.sha256 = String::new();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(days: u32) -> NewToken {
        NewToken {
            name: "power bi".into(),
            partner: "pcc-kent".parse().expect("partner"),
            created_by: "cli".into(),
            roles: vec![Role::Analyst],
            purposes: vec!["performance-scrutiny".parse().expect("purpose")],
            days,
        }
    }

    #[test]
    fn a_token_verifies_until_revoked_and_only_its_hash_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens::open(dir.path());
        let (text, info) = tokens.create(new(30)).expect("create");
        assert!(text.starts_with("cct_"));
        let on_disk = std::fs::read_to_string(dir.path().join("tokens/tokens.log")).expect("read");
        let secret = text.rsplit('_').next().expect("secret");
        assert!(!on_disk.contains(secret), "the secret is never stored");
        assert_eq!(tokens.verify(&text).map(|t| t.id), Some(info.id.clone()));
        // Another process's view (a fresh register) agrees.
        assert!(Tokens::open(dir.path()).verify(&text).is_some());
        let mut wrong = text.clone();
        wrong.pop();
        wrong.push(if text.ends_with('0') { '1' } else { '0' });
        assert!(tokens.verify(&wrong).is_none());
        assert!(tokens.verify("cct_nothing_here").is_none());
        let other: PartnerId = "pcc-essex".parse().expect("partner");
        assert!(
            tokens.revoke(&info.id, Some(&other)).is_err(),
            "not Essex's to revoke"
        );
        tokens.revoke(&info.id, None).expect("revoke");
        assert!(tokens.verify(&text).is_none());
        assert!(Tokens::open(dir.path()).verify(&text).is_none());
        assert!(tokens.create(new(0)).is_err() && tokens.create(new(367)).is_err());
    }
}

/// Tokens as callers manage their own, from any door: one audit event per change.
#[derive(Debug, Clone)]
pub struct TokenService {
    tokens: std::sync::Arc<Tokens>,
    audit: std::sync::Arc<crate::audit::AuditLog>,
}

/// A token a caller asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mint {
    /// A name for lists.
    pub name: String,
    /// Roles: a subset of the caller's own.
    pub roles: Vec<Role>,
    /// Purposes: within the caller's own, if the caller is itself limited.
    #[serde(default)]
    pub purposes: Vec<Purpose>,
    /// Days until it expires (default 90).
    #[serde(default = "default_days")]
    pub days: u32,
}

fn default_days() -> u32 {
    90
}

impl TokenService {
    /// The service over the register and the audit trail.
    pub fn new(
        tokens: std::sync::Arc<Tokens>,
        audit: std::sync::Arc<crate::audit::AuditLog>,
    ) -> TokenService {
        TokenService { tokens, audit }
    }

    /// The register.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Mints a token for the caller's own partner, within the caller's roles and purposes.
    pub async fn mint(
        &self,
        caller: &concordat_core::Caller,
        mint: Mint,
        door: &str,
    ) -> Result<(String, TokenInfo), StoreError> {
        let mut ev =
            crate::recorded::Pending::new(self.audit.clone(), caller, "token_create", door);
        let made = (|| {
            let forbidden = |m: String| StoreError::refused(ErrorKind::Forbidden, "forbidden", m);
            if let Some(r) = mint.roles.iter().find(|r| !caller.roles.contains(r)) {
                return Err(forbidden(format!(
                    "a token may carry only roles its creator holds; you do not hold {r}"
                )));
            }
            if !caller.purposes.is_empty() {
                if mint.purposes.is_empty() {
                    return Err(forbidden(
                        "your credential is limited to some purposes: name them".into(),
                    ));
                }
                if let Some(p) = mint.purposes.iter().find(|p| !caller.purposes.contains(p)) {
                    return Err(forbidden(format!(
                        "your credential may not be used for {p}, so no token it makes may"
                    )));
                }
            }
            if let Some(p) = mint
                .purposes
                .iter()
                .find(|p| !Purpose::KNOWN.contains(&p.as_str()))
            {
                return Err(StoreError::refused(
                    ErrorKind::InvalidInput,
                    "bad_request",
                    format!("unknown purpose `{p}`"),
                ));
            }
            self.tokens.create(NewToken {
                name: mint.name,
                partner: caller.partner.id.clone(),
                created_by: caller.subject.clone(),
                roles: mint.roles,
                purposes: mint.purposes,
                days: mint.days,
            })
        })();
        match made {
            Ok((text, info)) => {
                ev.event().detail =
                    Some(serde_json::json!({"token": info.id, "expires": info.expires}));
                ev.ok(201).await?;
                Ok((text, info))
            }
            Err(e) => {
                ev.refused(e.kind(), e.code()).await?;
                Err(e)
            }
        }
    }

    /// The caller's partner's tokens.
    pub fn list(&self, caller: &concordat_core::Caller) -> Result<Vec<TokenInfo>, StoreError> {
        self.tokens.list(Some(&caller.partner.id))
    }

    /// Revokes one of the caller's partner's tokens.
    pub async fn revoke(
        &self,
        caller: &concordat_core::Caller,
        id: &str,
        door: &str,
    ) -> Result<TokenInfo, StoreError> {
        let mut ev =
            crate::recorded::Pending::new(self.audit.clone(), caller, "token_revoke", door);
        ev.event().detail =
            Some(serde_json::json!({"token": id.chars().take(32).collect::<String>()}));
        match self.tokens.revoke(id, Some(&caller.partner.id)) {
            Ok(t) => {
                ev.ok(200).await?;
                Ok(t)
            }
            Err(e) => {
                ev.refused(e.kind(), e.code()).await?;
                Err(e)
            }
        }
    }
}
