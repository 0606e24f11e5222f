//! The query service: one query, from any door, from the caller and the SQL to a stream
//! of batches and its one audit event.
//!
//! Queries run on a runtime of their own (large stacks for planning, apart from the
//! runtime that serves the doors), with a per-partner limit on queries running at once,
//! a bound on queries running in all, and a deadline that cancels the work. The service
//! checks the role and the purpose, plans through [`crate::plan`] against the tables of
//! [`crate::catalog`], and opens the request's audit event: refusals are recorded here,
//! and a query that runs carries its event in the [`QueryRun`] until the door closes it
//! (or drops it, which records it as cancelled).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::plan::Reusable;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use concordat_core::{Caller, ErrorKind, Purpose, Role};
use concordat_policy::Policies;
use concordat_store::Store;
use concordat_store::audit::{AuditLog, DatasetVersion, EventBody};
use concordat_store::recorded::Pending;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::cache::{AnswerCache, Entry, Kept, Key, PlanCache};
use crate::error::{QueryError, classify};
use crate::plan::{Context, Planned};
use crate::{Disclosure, QueryLimits, sdc, session};

/// A dataset a query read, at the version it read.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetRead {
    /// Dataset name.
    pub dataset: String,
    /// Table version read; `None` for shipped reference data or a dataset with no data yet.
    pub version: Option<u64>,
}

/// One question, as any door received it.
#[derive(Debug, Clone, Copy)]
pub struct QueryRequest<'a> {
    /// Who asks.
    pub caller: &'a Caller,
    /// The declared purpose.
    pub purpose: &'a str,
    /// The SQL text.
    pub sql: &'a str,
    /// The door (`http`, `pg`, `flight`, `console`), recorded in the audit event.
    pub door: &'a str,
    /// Agreements in force on this day apply.
    pub today: chrono::NaiveDate,
    /// Values of the statement's `$1`, `$2`, ... placeholders; a value is cast to the type
    /// its place in the query needs (a Postgres client may send every value as text).
    pub params: &'a [datafusion::scalar::ScalarValue],
    /// How the SQL is read.
    pub dialect: crate::Dialect,
    /// Compute the answer afresh even if an identical one is kept (it is still kept for
    /// the next asker): HTTP's `Cache-Control: no-cache`.
    pub fresh: bool,
}

/// A query that planned and is running.
pub struct QueryRun {
    /// Output schema.
    pub schema: SchemaRef,
    /// Datasets read and their versions.
    pub datasets: Vec<DatasetRead>,
    /// Agreements applied.
    pub agreements: Vec<String>,
    /// What disclosure control did, when the query read aggregate-only data.
    pub disclosure: Option<Disclosure>,
    /// Result batches; an error ends the stream.
    pub batches: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    /// How long planning took.
    pub planning: Duration,
    /// True when the answer is one kept from an identical query over the same versions.
    pub cached: bool,
    /// True when the answer was computed with the plan kept from an identical query
    /// over the same versions.
    pub plan_reused: bool,
    event: Pending,
    _slot: Slot,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for QueryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRun")
            .field("datasets", &self.datasets)
            .finish()
    }
}

impl QueryRun {
    /// The request's audit event, to add what the door knows (rows, bytes, format).
    pub fn event(&mut self) -> &mut EventBody {
        self.event.event()
    }

    /// Stops the query (if still running) and hands back its audit event, for the door
    /// to close with the outcome once the answer is sent.
    pub fn close(self) -> Pending {
        self.event
    }

    /// Reads every batch, then records the event as answered.
    pub async fn collect(mut self) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let mut out = Vec::new();
        let mut rows = 0u64;
        while let Some(b) = self.batches.recv().await {
            match b {
                Ok(b) => {
                    rows += b.num_rows() as u64;
                    out.push(b);
                }
                Err(e) => {
                    let ev = self.close();
                    ev.refused(e.kind(), e.code())
                        .await
                        .map_err(|a| QueryError::Audit(a.to_string()))?;
                    return Err(e);
                }
            }
        }
        let schema = self.schema.clone();
        self.event().rows = Some(rows);
        self.close()
            .ok(200)
            .await
            .map_err(|a| QueryError::Audit(a.to_string()))?;
        Ok((schema, out))
    }
}

/// Whether an answer may be kept: deterministic, and read only from tables whose version
/// says whether they changed (shipped reference data never changes; the audit trail
/// grows with every request and is never kept).
fn keepable(planned: &Planned) -> bool {
    planned.deterministic
        && !planned.datasets.is_empty()
        && planned.datasets.iter().all(|d| {
            d.version.is_some()
                || concordat_core::Schemas::builtin()
                    .get(&d.dataset)
                    .is_some_and(|s| s.level == concordat_core::schema::DatasetLevel::Reference)
        })
}

/// Whether a question's plan may be kept: its answer could be (the same versions give
/// the same answer), and copies of its parts share nothing. A disclosure-controlled plan
/// is kept as its release and the plan over the released cells, and each run computes
/// the release again.
fn plan_keepable(planned: &Planned, plan: &Reusable) -> bool {
    keepable(planned) && plan.rerunnable()
}

/// The result schema of a query, planned but not run.
#[derive(Debug, Clone)]
pub struct Described {
    /// Output schema.
    pub schema: SchemaRef,
    /// Datasets the query would read.
    pub datasets: Vec<DatasetRead>,
    /// Agreements that would apply.
    pub agreements: Vec<String>,
    /// The types the query's placeholders take (`None` where the query does not say).
    pub params: Vec<Option<arrow::datatypes::DataType>>,
}

/// A query planned and running, before its event is attached.
struct Started {
    planned: Planned,
    batches: mpsc::Receiver<Result<RecordBatch, QueryError>>,
    planning: Duration,
    cached: bool,
    plan_reused: bool,
    slot: Slot,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// One partner's share: its queries running (permits) and waiting for one.
struct Gate {
    permits: Arc<tokio::sync::Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// A partner's place among its running queries; released on drop.
type Slot = tokio::sync::OwnedSemaphorePermit;

/// Runs policy-enforced queries.
pub struct QueryService {
    store: Arc<Store>,
    audit: Arc<AuditLog>,
    policies: Arc<Policies>,
    limits: QueryLimits,
    runtime: Option<tokio::runtime::Runtime>,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    running: Arc<tokio::sync::Semaphore>,
    spill_dir: PathBuf,
    record_key: Arc<sdc::cellkey::RecordKey>,
    footers: session::FooterCache,
    template: Arc<session::Template>,
    pg_catalogs: Arc<crate::pgcatalog::PgCatalogs>,
    answers: Arc<AnswerCache>,
    plans: Arc<PlanCache>,
    stored: Arc<crate::stored::StoredVersions>,
}

impl std::fmt::Debug for QueryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryService")
            .field("limits", &self.limits)
            .finish()
    }
}

impl QueryService {
    /// A service over a store, its audit trail (recorded to, and offered as the table
    /// `audit_log` to auditors) and the policies, with its own runtime.
    pub fn new(
        store: Arc<Store>,
        audit: Arc<AuditLog>,
        policies: Arc<Policies>,
        limits: QueryLimits,
    ) -> Result<QueryService, QueryError> {
        let spill_dir = store.config().data_dir.join("spill");
        if spill_dir.exists() {
            std::fs::remove_dir_all(&spill_dir).map_err(QueryError::internal)?;
        }
        std::fs::create_dir_all(&spill_dir).map_err(QueryError::internal)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .thread_name("concordat-query")
            .thread_stack_size(16 << 20)
            .enable_all()
            .build()
            .map_err(QueryError::internal)?;
        let running = Arc::new(tokio::sync::Semaphore::new(limits.concurrent.max(1)));
        let footers = session::footer_cache(64 << 20).map_err(QueryError::internal)?;
        let template = Arc::new(
            session::Template::new(limits.threads, &spill_dir, limits.spill_bytes, &footers)
                .map_err(QueryError::internal)?,
        );
        Ok(QueryService {
            footers,
            template,
            record_key: Arc::new(sdc::cellkey::RecordKey::random()),
            running,
            store,
            audit,
            policies,
            limits: limits.clone(),
            runtime: Some(runtime),
            gates: Mutex::new(HashMap::new()),
            spill_dir,
            pg_catalogs: Arc::default(),
            answers: Arc::new(AnswerCache::new(limits.answer_cache_bytes)),
            plans: Arc::new(PlanCache::new(limits.plan_cache_bytes)),
            stored: Arc::default(),
        })
    }

    /// Uses this secret for the record keys of disclosure control (by default a secret
    /// drawn when the service starts, which does not survive a restart).
    pub fn with_record_key(mut self, key: Arc<sdc::cellkey::RecordKey>) -> QueryService {
        self.record_key = key;
        self
    }

    /// A session with the limits, spill space and footer cache of one query, for work
    /// the gateway runs itself over the same data (the efficiency rebuild).
    pub fn session(&self) -> Result<datafusion::prelude::SessionContext, QueryError> {
        session::locked_session(
            self.limits.memory_bytes,
            &self.spill_dir,
            self.limits.spill_bytes,
            self.limits.threads,
            &self.footers,
        )
        .map_err(QueryError::internal)
    }

    /// A session for work in the background (the efficiency rebuild): one partition, so
    /// one file is decoded at a time, and at most `memory_bytes` for its operators
    /// (fewer if queries get less), spilling to disk beyond that; it leaves the other
    /// core to the analysts.
    pub fn background_session(
        &self,
        memory_bytes: usize,
    ) -> Result<datafusion::prelude::SessionContext, QueryError> {
        session::locked_session(
            memory_bytes.min(self.limits.memory_bytes),
            &self.spill_dir,
            self.limits.spill_bytes,
            1,
            &self.footers,
        )
        .map_err(QueryError::internal)
    }

    /// The data files whose footers queries have read and still keep: the files they
    /// opened (each by its path in the store).
    pub fn files_opened(&self) -> Vec<String> {
        self.footers
            .list_entries()
            .into_keys()
            .map(|p| p.to_string())
            .collect()
    }

    /// The secret behind disclosure control's record keys.
    pub fn record_key(&self) -> Arc<sdc::cellkey::RecordKey> {
        self.record_key.clone()
    }

    /// The limits queries run under.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Opens the audit event of a query request, with the SQL and purpose filled in.
    pub fn open_event(&self, req: &QueryRequest<'_>, action: &str) -> Pending {
        let mut ev = Pending::new(self.audit.clone(), req.caller, action, req.door);
        let body = ev.event();
        body.sql_sha256 = Some(hex::encode(Sha256::digest(req.sql.as_bytes())));
        body.sql = Some(req.sql.to_owned());
        body.purpose = Some(req.purpose.chars().take(64).collect());
        ev
    }

    /// Records a request a door refused before it could be asked (a malformed body, an
    /// answer format it cannot give), and returns the error to answer with.
    pub async fn refuse_at_door(&self, ev: Pending, err: QueryError) -> QueryError {
        match ev.refused(err.kind(), err.code()).await {
            Ok(()) => err,
            Err(a) => QueryError::Audit(a.to_string()),
        }
    }

    /// Plans and starts a query; returns once the first result (or error) is known.
    /// Refusals are recorded before they are returned.
    pub async fn query(&self, req: QueryRequest<'_>) -> Result<QueryRun, QueryError> {
        let ev = self.open_event(&req, "query");
        self.query_as(ev, req).await
    }

    /// [`QueryService::query`] under an event the caller opened (an extract is audited
    /// as one extract, not as an extract and a query).
    pub async fn query_as(
        &self,
        mut ev: Pending,
        req: QueryRequest<'_>,
    ) -> Result<QueryRun, QueryError> {
        match self.start(&req).await {
            Ok(s) => {
                let body = ev.event();
                body.datasets = s
                    .planned
                    .datasets
                    .iter()
                    .map(|d| DatasetVersion {
                        dataset: d.dataset.clone(),
                        version: d.version,
                    })
                    .collect();
                body.agreements = s.planned.agreements.clone();
                if s.cached {
                    body.cached = Some(true);
                }
                Ok(QueryRun {
                    schema: s.planned.schema,
                    datasets: s.planned.datasets,
                    agreements: s.planned.agreements,
                    disclosure: s.planned.disclosure,
                    batches: s.batches,
                    planning: s.planning,
                    cached: s.cached,
                    plan_reused: s.plan_reused,
                    event: ev,
                    _slot: s.slot,
                    _permit: s.permit,
                })
            }
            Err(e) => Err(self.refuse_at_door(ev, e).await),
        }
    }

    /// Plans a query without running it and returns its result schema (what Postgres
    /// `Describe` and Flight `GetFlightInfo` answer). Audited as `describe`.
    pub async fn describe(&self, req: QueryRequest<'_>) -> Result<Described, QueryError> {
        let mut ev = self.open_event(&req, "describe");
        let mut reused = false;
        let described = async {
            let deadline = tokio::time::Instant::now() + self.limits.timeout;
            let (_slot, _permit, purpose) = self.admit(&req, deadline).await?;
            // A kept answer to the same question over the same versions has the shape
            // planning would give (Flight SQL describes before it runs).
            let (key, kept) = self.lookup(&req).await;
            if let Some(kept) = kept {
                reused = true;
                return Ok(kept.planned.clone());
            }
            let ctx = self.context(&req, purpose);
            let plan_key = key.map(|k| k.with_partitions(ctx.partitions));
            if let Some(plan) = self.kept_plan(plan_key.as_ref()).await {
                return Ok(plan.planned.clone());
            }
            let sql = req.sql.to_owned();
            let deadline = self.limits.timeout;
            let planned = self
                .run(async move {
                    tokio::time::timeout(deadline, async {
                        ctx.plan(&sql).await.map(|made| made.planned)
                    })
                    .await
                })
                .await?;
            match planned {
                Ok(p) => p,
                Err(_) => Err(QueryError::Timeout {
                    seconds: deadline.as_secs(),
                }),
            }
        }
        .await;
        match described {
            Ok(p) => {
                ev.event().agreements = p.agreements.clone();
                if reused {
                    ev.event().cached = Some(true);
                }
                ev.ok(200)
                    .await
                    .map_err(|a| QueryError::Audit(a.to_string()))?;
                Ok(Described {
                    schema: p.schema,
                    datasets: p.datasets,
                    agreements: p.agreements,
                    params: p.params,
                })
            }
            Err(e) => Err(self.refuse_at_door(ev, e).await),
        }
    }

    /// The tables a caller may query under the purpose today (the datasets and, for
    /// auditors, the audit trail), each with the columns it shows, in name order: what a
    /// client's catalog calls list (Flight SQL `GetTables`). Nothing is read. Audited as
    /// `catalog`, with the door's name for the call as its SQL text.
    pub async fn tables(
        &self,
        req: QueryRequest<'_>,
    ) -> Result<Vec<(String, SchemaRef)>, QueryError> {
        let mut ev = self.open_event(&req, "catalog");
        let listed = async {
            let deadline = tokio::time::Instant::now() + self.limits.timeout;
            let (_slot, _permit, purpose) = self.admit(&req, deadline).await?;
            let ctx = self.context(&req, purpose);
            self.run(async move {
                let shapes = ctx.shapes().await?;
                let mut agreements = std::collections::BTreeSet::new();
                let mut tables = Vec::with_capacity(shapes.len());
                for (name, provided) in shapes {
                    agreements.extend(provided.agreements);
                    tables.push((name, provided.table.schema()));
                }
                Ok::<_, QueryError>((tables, agreements))
            })
            .await?
        }
        .await;
        match listed {
            Ok((tables, agreements)) => {
                ev.event().agreements = agreements.into_iter().collect();
                ev.ok(200)
                    .await
                    .map_err(|a| QueryError::Audit(a.to_string()))?;
                Ok(tables)
            }
            Err(e) => Err(self.refuse_at_door(ev, e).await),
        }
    }

    /// Checks what needs no planning (role, size, purpose) and takes the caller's slot
    /// and a place among the queries running, waiting for both (in arrival order) until
    /// the deadline.
    async fn admit(
        &self,
        req: &QueryRequest<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<(Slot, tokio::sync::OwnedSemaphorePermit, Purpose), QueryError> {
        if !req.caller.has_any(&[Role::Analyst, Role::Inspector]) {
            return Err(QueryError::Refused {
                code: "forbidden",
                message: "queries need the analyst or inspector role".into(),
            });
        }
        if req.sql.len() > self.limits.max_sql_bytes {
            return Err(QueryError::SqlTooLarge {
                limit: self.limits.max_sql_bytes,
            });
        }
        // Parsed once here; typed from here on, through the policy decision.
        let purpose = Purpose::known(req.purpose)
            .map_err(|_| QueryError::Purpose(req.purpose.chars().take(64).collect()))?;
        if !req.caller.may_declare(&purpose) {
            return Err(QueryError::Refused {
                code: "purpose_not_permitted",
                message: format!("this credential may not be used for {purpose}"),
            });
        }
        let slot = self.slot(req.caller.partner.id.as_str(), deadline).await?;
        // Memory is bounded per query; the number of queries running at once bounds the whole.
        let permit =
            match tokio::time::timeout_at(deadline, self.running.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return Err(QueryError::door(
                        ErrorKind::Unavailable,
                        "unavailable",
                        "the query service is shutting down",
                    ));
                }
                Err(_) => {
                    return Err(QueryError::Timeout {
                        seconds: self.limits.timeout.as_secs(),
                    });
                }
            };
        Ok((slot, permit, purpose))
    }

    fn context(&self, req: &QueryRequest<'_>, purpose: Purpose) -> Context {
        Context {
            store: self.store.clone(),
            audit: self.audit.clone(),
            policies: self.policies.clone(),
            caller: req.caller.clone(),
            purpose,
            today: req.today,
            limits: self.limits.clone(),
            spill_dir: self.spill_dir.clone(),
            record_key: self.record_key.clone(),
            footers: self.footers.clone(),
            template: self.template.clone(),
            params: req.params.to_vec(),
            dialect: req.dialect,
            pg_catalogs: self.pg_catalogs.clone(),
            stored: self.stored.clone(),
            partitions: self.partitions(),
        }
    }

    /// Partitions for a query about to be planned (it holds its place among the running):
    /// one per query thread when it runs alone, one when others run beside it. Splitting
    /// a query's work only pays while threads would otherwise be idle; beside other
    /// queries it costs repartitioning and a second aggregation phase (about 15% of the
    /// CPU of a disclosure-controlled breakdown) and gains nothing.
    fn partitions(&self) -> usize {
        let running = self
            .limits
            .concurrent
            .max(1)
            .saturating_sub(self.running.available_permits());
        if running > 1 {
            1
        } else {
            self.limits.threads.max(1)
        }
    }

    /// A place among the partner's running queries. Beyond `per_partner` running, a query
    /// waits its turn (within its deadline) unless `queue` of the partner's queries are
    /// already waiting: then it is refused as busy, to be retried.
    async fn slot(
        &self,
        partner: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Slot, QueryError> {
        use std::sync::atomic::Ordering;
        let gate = {
            let mut gates = self
                .gates
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            gates
                .entry(partner.to_owned())
                .or_insert_with(|| {
                    Arc::new(Gate {
                        permits: Arc::new(tokio::sync::Semaphore::new(
                            self.limits.per_partner.max(1),
                        )),
                        waiting: std::sync::atomic::AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        if let Ok(p) = gate.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        if gate.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.queue {
            gate.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(QueryError::Busy {
                limit: self.limits.per_partner,
            });
        }
        let got = tokio::time::timeout_at(deadline, gate.permits.clone().acquire_owned()).await;
        gate.waiting.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(QueryError::door(
                ErrorKind::Unavailable,
                "unavailable",
                "the query service is shutting down",
            )),
            Err(_) => Err(QueryError::Timeout {
                seconds: self.limits.timeout.as_secs(),
            }),
        }
    }

    async fn start(&self, req: &QueryRequest<'_>) -> Result<Started, QueryError> {
        let started = std::time::Instant::now();
        // One deadline from arrival: waiting for a turn counts against the query's time.
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let (slot, permit, purpose) = self.admit(req, deadline).await?;
        let (key, kept) = self.lookup(req).await;
        if let Some(kept) = kept {
            let (tx, rx) = mpsc::channel(kept.value.len().max(1));
            for b in &kept.value {
                let _ = tx.try_send(Ok(b.clone()));
            }
            return Ok(Started {
                planned: kept.planned.clone(),
                batches: rx,
                planning: started.elapsed(),
                cached: true,
                plan_reused: false,
                slot,
                permit,
            });
        }
        let ctx = self.context(req, purpose);
        let plan_key = key.as_ref().map(|k| k.with_partitions(ctx.partitions));
        let plan = self.kept_plan(plan_key.as_ref()).await;
        let plans = self.plans.clone();
        let (planned_tx, planned_rx) = oneshot::channel::<Result<(Planned, bool), QueryError>>();
        let (tx, rx) = mpsc::channel(4);
        let sql = req.sql.to_owned();
        let timeout = self.limits.timeout;
        let answers = self.answers.clone();
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::internal("the query runtime has stopped"))?;
        runtime.spawn(async move {
            let timed_out = QueryError::Timeout {
                seconds: timeout.as_secs(),
            };
            // The kept plan run again, with the record of its release run again.
            let rerun = match &plan {
                Some(kept) => match tokio::time::timeout_at(deadline, ctx.rerun(&kept.value)).await
                {
                    Ok(Ok(Some((disclosure, stream)))) => {
                        let mut planned = kept.planned.clone();
                        if disclosure.is_some() {
                            planned.disclosure = disclosure;
                        }
                        Ok(Some((planned, stream)))
                    }
                    Ok(Ok(None)) => Ok(None),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(timed_out.clone()),
                },
                None => Ok(None),
            };
            let started = match rerun {
                Ok(Some((planned, stream))) => Ok((planned, true, stream)),
                Err(e) => Err(e),
                Ok(None) => match tokio::time::timeout_at(deadline, ctx.start(&sql)).await {
                    Ok(Ok((planned, reusable, stream))) => {
                        if let Some(key) = plan_key.filter(|_| plan_keepable(&planned, &reusable)) {
                            let bytes = crate::cache::plan_bytes(&key) + reusable.held_bytes();
                            plans.put(key, planned.clone(), reusable, bytes);
                        }
                        Ok((planned, false, stream))
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(timed_out.clone()),
                },
            };
            let (planned, plan_reused, mut stream) = match started {
                Ok(s) => s,
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            // The answer is kept only if it can be, and only once it is whole.
            let mut keeping = match key {
                Some(key) if keepable(&planned) => Some((key, planned.clone(), Vec::new(), 0usize)),
                _ => None,
            };
            if planned_tx.send(Ok((planned, plan_reused))).is_err() {
                return;
            }
            loop {
                // A door that stops listening (a cancel request, a client gone) stops the
                // work now, not at the next batch.
                let pulled = tokio::select! {
                    pulled = tokio::time::timeout_at(deadline, stream.next()) => pulled,
                    () = tx.closed() => break,
                };
                let next = match pulled {
                    Ok(Some(Ok(batch))) => Ok(batch),
                    Ok(Some(Err(e))) => Err(classify(&e)),
                    Ok(None) => {
                        if let Some((key, planned, batches, bytes)) = keeping.take() {
                            answers.put(key, planned, batches, bytes);
                        }
                        break;
                    }
                    Err(_) => Err(timed_out.clone()),
                };
                match (&next, keeping.as_mut()) {
                    (Ok(b), Some((_, _, kept, bytes))) => {
                        *bytes += b.get_array_memory_size();
                        if *bytes > answers.largest() {
                            keeping = None;
                        } else {
                            kept.push(b.clone());
                        }
                    }
                    (Err(_), _) => keeping = None,
                    _ => {}
                }
                let stop = next.is_err();
                // A closed channel means the caller went away: dropping the stream cancels the work.
                if tx.send(next).await.is_err() || stop {
                    break;
                }
            }
        });
        let (planned, plan_reused) = planned_rx
            .await
            .map_err(|_| QueryError::internal("the query task ended early"))??;
        Ok(Started {
            planned,
            batches: rx,
            planning: started.elapsed(),
            cached: false,
            plan_reused,
            slot,
            permit,
        })
    }

    /// The request's key when answers are kept, and the answer kept under it when the
    /// request may take one (not `fresh`) and it is still current.
    async fn lookup(
        &self,
        req: &QueryRequest<'_>,
    ) -> (Option<Key>, Option<Arc<Entry<Vec<RecordBatch>>>>) {
        let key = if self.answers.enabled() || self.plans.enabled() {
            Key::of(req)
        } else {
            None
        };
        let kept = match &key {
            Some(key) if !req.fresh => self.current(&self.answers, key).await,
            _ => None,
        };
        (key, kept)
    }

    /// The entry kept under `key`, if every table it read is still at the version it
    /// read; a stale one is forgotten.
    async fn current<V>(&self, cache: &Kept<V>, key: &Key) -> Option<Arc<Entry<V>>> {
        let kept = cache.get(key)?;
        for d in &kept.planned.datasets {
            let Some(version) = d.version else { continue };
            match self.store.latest_version(&d.dataset).await {
                Ok(Some(now)) if now == version => {}
                _ => {
                    cache.remove(key);
                    return None;
                }
            }
        }
        Some(kept)
    }

    /// The plan kept for the question, if its tables are unchanged.
    async fn kept_plan(&self, key: Option<&Key>) -> Option<Arc<Entry<Reusable>>> {
        self.current(&self.plans, key?).await
    }

    /// Runs a task on the query runtime (large stacks for planning, separate from the
    /// runtime serving the doors) and waits for it.
    pub async fn run<F>(&self, task: F) -> Result<F::Output, QueryError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::internal("the query runtime has stopped"))?;
        runtime.spawn(task).await.map_err(QueryError::internal)
    }
}

impl Drop for QueryService {
    /// Queries still running are cancelled; nothing waits for them, so the service can be
    /// dropped from async code.
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
