//! Leases: background work (the efficiency rebuild, compaction) done by one replica at a
//! time.
//!
//! On a shared store a lease is a sequence of generations, `leases/<name>/<n>.json`, each
//! naming its holder and when it expires, each written only if absent: whoever writes
//! generation n+1 after generation n expired (or was its own) holds the lease, and a
//! replica that loses that race holds nothing. The holder renews it while it works and
//! gives it up when done; a holder that dies simply lets it expire. On a local directory
//! one process owns the store, so the lease is always granted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::shared::Shared;

#[derive(Debug, Serialize, Deserialize)]
struct Generation {
    holder: String,
    /// Milliseconds since the epoch.
    expires: i64,
}

/// A lease held; renewed in the background until dropped, then given up.
#[derive(Debug)]
pub struct Lease {
    renew: Option<tokio::task::JoinHandle<()>>,
    release: Option<(Shared, String, String)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        if let Some((shared, name, holder)) = self.release.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = write_next(&shared, &name, &holder, 0).await;
            });
        }
    }
}

fn prefix(name: &str) -> String {
    format!("leases/{name}")
}

/// The latest generation: its number and content.
async fn latest(shared: &Shared, name: &str) -> Result<Option<(u64, Generation)>, StoreError> {
    let listed = shared.list(&prefix(name), None).await?;
    for (key, _) in listed.iter().rev() {
        let Some(n) = key
            .rsplit('/')
            .next()
            .and_then(|f| f.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if let Some(b) = shared.get(key).await?
            && let Ok(g) = serde_json::from_slice::<Generation>(&b)
        {
            return Ok(Some((n, g)));
        }
    }
    Ok(None)
}

/// Writes the generation after the latest if the latest is expired or `holder`'s, with
/// `expires`; true when written. Older generations are removed once written.
async fn write_next(
    shared: &Shared,
    name: &str,
    holder: &str,
    expires: i64,
) -> Result<bool, StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let current = latest(shared, name).await?;
    let next = match &current {
        Some((n, g)) if g.holder == holder || g.expires <= now => n + 1,
        Some(_) => return Ok(false),
        None => 1,
    };
    let body = serde_json::to_vec(&Generation {
        holder: holder.to_owned(),
        expires,
    })
    .map_err(StoreError::internal)?;
    let written = shared
        .put_new(&format!("{}/{next:020}.json", prefix(name)), body.into())
        .await?;
    if written && next > 2 {
        let _ = shared
            .delete(&format!("{}/{:020}.json", prefix(name), next - 2))
            .await;
    }
    Ok(written)
}

impl crate::Store {
    /// Takes the lease `name` for `ttl` (renewed while the returned guard lives), or
    /// `None` when another replica holds it.
    pub async fn lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let Some(shared) = self.cfg.shared.clone() else {
            return Ok(Some(Lease {
                renew: None,
                release: None,
            }));
        };
        let holder = self.replica_id.clone();
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let expires = chrono::Utc::now().timestamp_millis() + ms(ttl);
        if !write_next(&shared, name, &holder, expires).await? {
            return Ok(None);
        }
        let (s, n, h) = (shared.clone(), name.to_owned(), holder.clone());
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let expires = chrono::Utc::now().timestamp_millis() + ms(ttl);
                match write_next(&s, &n, &h, expires).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(lease = n, "lease lost to another replica");
                        break;
                    }
                    Err(e) => tracing::warn!(lease = n, error = %e, "lease not renewed"),
                }
            }
        });
        Ok(Some(Lease {
            renew: Some(renew),
            release: Some((shared, name.to_owned(), holder)),
        }))
    }
}
