//! Leases: background work (the efficiency rebuild, compaction) done by one replica at a
//! time.
//!
//! On a shared store a lease is a sequence of generations, `leases/<name>/<n>.json`, each
//! naming its holder and when it expires, each written only if absent: whoever writes
//! generation n+1 after generation n expired (or was its own) holds the lease, and a
//! replica that loses that race holds nothing. The holder renews it while it works and
//! gives it up when done; a holder that dies simply lets it expire. On a local directory
//! one process owns the store, so the lease is always granted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    release: Option<(Shared, String, String, Arc<AtomicU64>)>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        if let Some((shared, name, holder, generation)) = self.release.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let held = generation.load(Ordering::SeqCst);
                let _ = write_next(&shared, &name, &holder, 0, Some(held)).await;
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

/// Writes the generation after the latest, with `expires`, and returns its number: when
/// `after` is given, only if the latest is exactly that one (renewing or giving up a
/// lease held); otherwise if the latest is expired or `holder`'s (taking it). `None`
/// when another replica holds it. Older generations are removed once written.
async fn write_next(
    shared: &Shared,
    name: &str,
    holder: &str,
    expires: i64,
    after: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    for _ in 0..5 {
        let now = chrono::Utc::now().timestamp_millis();
        let current = latest(shared, name).await?;
        let next = match (&current, after) {
            (Some((n, _)), Some(held)) if *n == held => n + 1,
            (_, Some(_)) => return Ok(None),
            (Some((n, g)), None) if g.holder == holder || g.expires <= now => n + 1,
            (Some(_), None) => return Ok(None),
            (None, None) => 1,
        };
        let body = serde_json::to_vec(&Generation {
            holder: holder.to_owned(),
            expires,
        })
        .map_err(StoreError::internal)?;
        if shared
            .put_new(&format!("{}/{next:020}.json", prefix(name)), body.into())
            .await?
        {
            if next > 2 {
                let _ = shared
                    .delete(&format!("{}/{:020}.json", prefix(name), next - 2))
                    .await;
            }
            return Ok(Some(next));
        }
        // Someone wrote that generation first: look again.
        if after.is_some() {
            return Ok(None);
        }
    }
    Ok(None)
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
        let Some(taken) = write_next(&shared, name, &holder, expires, None).await? else {
            return Ok(None);
        };
        let generation = Arc::new(AtomicU64::new(taken));
        let (s, n, h, g) = (
            shared.clone(),
            name.to_owned(),
            holder.clone(),
            generation.clone(),
        );
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                let expires = chrono::Utc::now().timestamp_millis() + ms(ttl);
                let held = g.load(Ordering::SeqCst);
                match write_next(&s, &n, &h, expires, Some(held)).await {
                    Ok(Some(next)) => g.store(next, Ordering::SeqCst),
                    Ok(None) => {
                        tracing::warn!(lease = n, "lease lost to another replica");
                        break;
                    }
                    Err(e) => tracing::warn!(lease = n, error = %e, "lease not renewed"),
                }
            }
        });
        Ok(Some(Lease {
            renew: Some(renew),
            release: Some((shared, name.to_owned(), holder, generation)),
        }))
    }
}
