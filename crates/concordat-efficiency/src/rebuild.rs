//! Writing a new version of `force_efficiency` when an input changed, and the
//! background task that does it after commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use concordat_policy::Policies;
use concordat_query::QueryService;
use concordat_store::Store;
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use crate::compute::{compute, to_batch};
use crate::inputs::{Release, read_inputs};
use crate::{BuildError, DATASET, INPUTS, q};

/// The input versions the latest `force_efficiency` was built from, if any.
pub async fn built_from(
    store: &Store,
) -> Result<Option<BTreeMap<String, Option<u64>>>, BuildError> {
    let versions = store.versions(DATASET).await?;
    Ok(versions.first().map(|v| v.sources.clone()))
}

/// Whether `force_efficiency` was built from the inputs' latest versions (or there is
/// nothing to build).
pub async fn up_to_date(store: &Store) -> Result<bool, BuildError> {
    let mut current = BTreeMap::new();
    for name in INPUTS {
        // Never from a snapshot another replica has moved past.
        store.look_again(name);
        current.insert(name.to_owned(), store.latest_version(name).await?);
    }
    Ok(
        current.values().all(Option::is_none)
            || built_from(store).await?.as_ref() == Some(&current),
    )
}

/// Rebuilds `force_efficiency` if an input has changed since the last build. Returns the
/// new version, or `None` when it was already up to date (or there is nothing to build).
pub async fn rebuild(store: &Store, release: Release<'_>) -> Result<Option<u64>, BuildError> {
    let min_count = release.terms.min_count;
    // Compare versions before reading any rows: at start, and after a commit that a
    // coalesced rebuild already covered, the inputs are not scanned at all.
    if up_to_date(store).await? {
        return Ok(None);
    }
    let (inputs, years, versions) = read_inputs(store, release).await?;
    // Years come from every input with a financial year in it.
    let mut years: Vec<String> = years
        .into_iter()
        .chain(inputs.neighbourhood.keys().map(|(_, y)| y.clone()))
        .chain(inputs.satisfaction.keys().map(|(_, y)| y.clone()))
        .chain(inputs.court.keys().map(|(_, y)| y.clone()))
        .chain(inputs.reoffending.keys().map(|(_, y)| y.clone()))
        .collect();
    years.sort();
    years.dedup();
    let rows = compute(&inputs, &years, min_count);
    let batch = to_batch(&rows).map_err(q)?;
    let version = store.write_derived(DATASET, vec![batch], versions).await?;
    tracing::info!(version, rows = rows.len(), "force_efficiency rebuilt");
    Ok(Some(version))
}

/// The lease under which one replica rebuilds at a time.
const LEASE: &str = "efficiency-rebuild";
/// Memory of the rebuild's operators: grouping tens of millions of rows by person
/// spills to disk beyond it.
const REBUILD_MEMORY: usize = 128 << 20;
/// How long a rebuild's lease lasts unless renewed (it is, every third of this).
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(120);
/// How often a replica on a shared store checks for inputs changed elsewhere.
const SHARED_POLL: std::time::Duration = std::time::Duration::from_secs(10);

/// The record-level inputs, whose figures pass disclosure control.
pub const RECORD_LEVEL_INPUTS: [&str; 2] = ["court_timeliness", "reoffending_cohort"];

/// Rebuilds `force_efficiency` in the background: once at start (which catches up after
/// a crash between an input's commit and its rebuild) and whenever woken after an input
/// commits. Wake-ups during a rebuild coalesce into one more. It runs on the query
/// service's runtime, in a session with a query's limits, releasing record-level figures
/// under the terms `concordat-policy` gives for derived data.
#[derive(Debug, Clone)]
pub struct Rebuilder {
    wake: Arc<Notify>,
}

impl Rebuilder {
    /// Starts the task on `tracker`; it ends when `stopping` turns true, after the
    /// rebuild under way. `built` is told each new version.
    pub fn spawn(
        tracker: &TaskTracker,
        mut stopping: watch::Receiver<bool>,
        query: Arc<QueryService>,
        store: Arc<Store>,
        policies: Arc<Policies>,
        built: impl Fn(u64) + Send + Sync + 'static,
    ) -> Rebuilder {
        let wake = Arc::new(Notify::new());
        wake.notify_one();
        let woken = wake.clone();
        // Replicas sharing a store also look now and then: an input committed through
        // another replica wakes only that one, and it may have stopped before rebuilding.
        let poll = store.is_shared().then_some(SHARED_POLL);
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = woken.notified() => {}
                    () = async {
                        match poll {
                            Some(p) => tokio::time::sleep(p).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
                if *stopping.borrow() {
                    break;
                }
                match Self::once(&query, &store, &policies).await {
                    Ok(Some(version)) => built(version),
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "force_efficiency rebuild failed"),
                }
            }
        });
        Rebuilder { wake }
    }

    /// Rebuilds now, on the query runtime.
    pub async fn once(
        query: &QueryService,
        store: &Arc<Store>,
        policies: &Policies,
    ) -> Result<Option<u64>, BuildError> {
        // One replica at a time; the others read what it writes. Nothing to do is
        // found without taking the lease.
        if up_to_date(store).await? {
            return Ok(None);
        }
        let Some(_lease) = store.lease(LEASE, LEASE_TTL).await? else {
            return Ok(None);
        };
        let session = query.background_session(REBUILD_MEMORY).map_err(q)?;
        let key = query.record_key();
        let terms = policies.derived_terms(&RECORD_LEVEL_INPUTS);
        let store = store.clone();
        query
            .run(async move {
                let release = Release {
                    session: &session,
                    terms,
                    key: &key,
                };
                rebuild(&store, release).await
            })
            .await
            .map_err(q)?
    }

    /// Asks for a rebuild if `dataset` is an input.
    pub fn after_commit(&self, dataset: &str) {
        if INPUTS.contains(&dataset) {
            self.wake.notify_one();
        }
    }
}
