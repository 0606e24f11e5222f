//! Policy-enforced SQL.
//!
//! Each query runs in a fresh DataFusion session that holds only the tables the caller's
//! agreements allow for the declared purpose today, each wrapped in a [`PolicyTable`]
//! that removes hidden columns, coarsens masked ones and filters rows to the caller's
//! scope beneath a pushdown boundary. Statements other than a single read query, plan
//! nodes other than relational reads, table functions, file and URL access, recursive
//! CTEs and unbounded joins are refused. Queries run on their own runtime, with a memory
//! pool, a capped spill directory, a deadline that cancels the work, a per-partner
//! concurrency limit, and errors that never carry a data value.

pub mod efficiency;
pub mod guard;
pub mod policy_table;
pub mod sdc;
pub mod session;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use concordat_core::{DatasetLevel, ErrorKind, Partner, Purpose, Reference, Schemas};
use concordat_policy::{Access, CombinedView, Policies, RefusalReason};
use concordat_store::audit::AuditLog;
use concordat_store::{Store, StoreError};
use datafusion::common::DataFusionError;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use policy_table::{PolicyBoundary, PolicyTable, TableView};
pub use sdc::{Disclosure, MARKER};

/// Limits on queries.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Longest SQL text accepted, in bytes.
    pub max_sql_bytes: usize,
    /// Memory one query may reserve before spilling or failing.
    pub memory_bytes: usize,
    /// Disk one query may spill to.
    pub spill_bytes: u64,
    /// Wall-clock limit, planning included.
    pub timeout: Duration,
    /// Queries one partner may run at once; more get 429.
    pub per_partner: usize,
    /// Worker threads of the query runtime.
    pub threads: usize,
    /// Queries running at once across all partners; others wait (within their timeout).
    pub concurrent: usize,
    /// Most groups an aggregate over aggregate-only data may produce.
    pub max_groups: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_sql_bytes: 64 * 1024,
            memory_bytes: 512 << 20,
            spill_bytes: 4 << 30,
            timeout: Duration::from_secs(60),
            per_partner: 4,
            threads: 2,
            concurrent: 4,
            max_groups: 100_000,
        }
    }
}

/// Why a query did not run or did not finish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not parse or plan (unknown table or column, syntax, types).
    #[error("{0}")]
    Sql(String),
    /// Not a read query, or a refused construct.
    #[error("{0}")]
    NotAllowed(String),
    /// An agreement refuses it; the message names the agreement.
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// The purpose is not one agreements can name.
    #[error(
        "unknown purpose `{0}`; purposes are: reducing-reoffending, performance-scrutiny, efficiency-comparison, inspection, audit"
    )]
    Purpose(String),
    /// The SQL text is too long.
    #[error("the SQL text is longer than {limit} bytes")]
    SqlTooLarge { limit: usize },
    /// The partner already runs as many queries as allowed.
    #[error("your organisation already has {limit} queries running; retry when one finishes")]
    Busy { limit: usize },
    /// Over the time limit; the work was cancelled.
    #[error("the query ran longer than {seconds} seconds and was cancelled")]
    Timeout { seconds: u64 },
    /// Over the memory limit.
    #[error(
        "the query needed more memory (or spill space) than one query may use; aggregate more, or select fewer columns"
    )]
    Memory,
    /// Evaluating an expression failed; no value is named.
    #[error("the query failed while evaluating data: {0}")]
    Execution(&'static str),
    /// A bug or storage failure; logged, not shown.
    #[error("internal error")]
    Internal(String),
}

impl QueryError {
    /// The kind, for the server's status mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Sql(_)
            | QueryError::NotAllowed(_)
            | QueryError::Purpose(_)
            | QueryError::Execution(_) => ErrorKind::InvalidInput,
            QueryError::Refused { .. } => ErrorKind::Forbidden,
            QueryError::SqlTooLarge { .. }
            | QueryError::Busy { .. }
            | QueryError::Timeout { .. }
            | QueryError::Memory => ErrorKind::TooLarge,
            QueryError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Sql(_) => "sql",
            QueryError::NotAllowed(_) => "not_allowed",
            QueryError::Refused { code, .. } => code,
            QueryError::Purpose(_) => "purpose",
            QueryError::SqlTooLarge { .. } => "too_large",
            QueryError::Busy { .. } => "too_many_queries",
            QueryError::Timeout { .. } => "timeout",
            QueryError::Memory => "memory_limit",
            QueryError::Execution(_) => "query_failed",
            QueryError::Internal(_) => "internal",
        }
    }
}

/// A dataset a query read, at the version it read.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetRead {
    /// Dataset name.
    pub dataset: String,
    /// Table version read; `None` for shipped reference data or a dataset with no data yet.
    pub version: Option<u64>,
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
    _slot: Slot,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

struct Planned {
    schema: SchemaRef,
    datasets: Vec<DatasetRead>,
    agreements: Vec<String>,
    disclosure: Option<Disclosure>,
}

/// Counts a partner's running queries; released on drop.
struct Slot {
    active: Arc<Mutex<HashMap<String, usize>>>,
    partner: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = active.get_mut(&self.partner) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Runs policy-enforced queries.
pub struct QueryService {
    store: Arc<Store>,
    audit: Option<Arc<AuditLog>>,
    policies: Arc<Policies>,
    limits: QueryLimits,
    runtime: Option<tokio::runtime::Runtime>,
    active: Arc<Mutex<HashMap<String, usize>>>,
    running: Arc<tokio::sync::Semaphore>,
    spill_dir: PathBuf,
    record_key: Arc<sdc::cellkey::RecordKey>,
    footers: session::FooterCache,
}

impl std::fmt::Debug for QueryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryService")
            .field("limits", &self.limits)
            .finish()
    }
}

impl QueryService {
    /// A service over a store and policies, with its own runtime.
    pub fn new(
        store: Arc<Store>,
        policies: Arc<Policies>,
        limits: QueryLimits,
    ) -> Result<QueryService, QueryError> {
        Self::with_audit(store, None, policies, limits)
    }

    /// A service that also offers the audit trail as table `audit_log` to auditors.
    pub fn with_audit(
        store: Arc<Store>,
        audit: Option<Arc<AuditLog>>,
        policies: Arc<Policies>,
        limits: QueryLimits,
    ) -> Result<QueryService, QueryError> {
        let spill_dir = store.config().data_dir.join("spill");
        if spill_dir.exists() {
            std::fs::remove_dir_all(&spill_dir).map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        std::fs::create_dir_all(&spill_dir).map_err(|e| QueryError::Internal(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.threads.max(1))
            .thread_name("concordat-query")
            .thread_stack_size(16 << 20)
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let running = Arc::new(tokio::sync::Semaphore::new(limits.concurrent.max(1)));
        let footers =
            session::footer_cache(64 << 20).map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(QueryService {
            footers,
            record_key: Arc::new(sdc::cellkey::RecordKey::random()),
            running,
            store,
            audit,
            policies,
            limits,
            runtime: Some(runtime),
            active: Arc::new(Mutex::new(HashMap::new())),
            spill_dir,
        })
    }

    /// Uses this secret for the record keys of disclosure control (by default a secret
    /// drawn when the service starts, which does not survive a restart).
    pub fn with_record_key(mut self, key: sdc::cellkey::RecordKey) -> QueryService {
        self.record_key = Arc::new(key);
        self
    }

    fn slot(&self, partner: &str) -> Result<Slot, QueryError> {
        let mut active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = active.entry(partner.to_owned()).or_insert(0);
        if *n >= self.limits.per_partner {
            return Err(QueryError::Busy {
                limit: self.limits.per_partner,
            });
        }
        *n += 1;
        Ok(Slot {
            active: self.active.clone(),
            partner: partner.to_owned(),
        })
    }

    /// Plans and starts a query; returns once the first result (or error) is known.
    pub async fn query(
        &self,
        partner: &Partner,
        sql: &str,
        purpose: &str,
        today: chrono::NaiveDate,
    ) -> Result<QueryRun, QueryError> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(QueryError::SqlTooLarge {
                limit: self.limits.max_sql_bytes,
            });
        }
        if !Purpose::KNOWN.contains(&purpose) {
            return Err(QueryError::Purpose(purpose.chars().take(64).collect()));
        }
        let slot = self.slot(partner.id.as_str())?;
        // Memory is bounded per query; the number of queries running at once bounds the whole.
        let permit =
            match tokio::time::timeout(self.limits.timeout, self.running.clone().acquire_owned())
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return Err(QueryError::Internal(
                        "the query service is shutting down".into(),
                    ));
                }
                Err(_) => {
                    return Err(QueryError::Timeout {
                        seconds: self.limits.timeout.as_secs(),
                    });
                }
            };
        let (planned_tx, planned_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(4);
        let ctx = Context {
            store: self.store.clone(),
            audit: self.audit.clone(),
            policies: self.policies.clone(),
            partner: partner.clone(),
            purpose: purpose.to_owned(),
            today,
            limits: self.limits.clone(),
            spill_dir: self.spill_dir.clone(),
            record_key: self.record_key.clone(),
            footers: self.footers.clone(),
        };
        let sql = sql.to_owned();
        let timeout = self.limits.timeout;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::Internal("the query runtime has stopped".into()))?;
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let timed_out = QueryError::Timeout {
                seconds: timeout.as_secs(),
            };
            let started = match tokio::time::timeout_at(deadline, ctx.start(&sql)).await {
                Ok(r) => r,
                Err(_) => Err(timed_out.clone()),
            };
            let (planned, mut stream) = match started {
                Ok(s) => s,
                Err(e) => {
                    let _ = planned_tx.send(Err(e));
                    return;
                }
            };
            if planned_tx.send(Ok(planned)).is_err() {
                return;
            }
            loop {
                let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(batch))) => Ok(batch),
                    Ok(Some(Err(e))) => Err(classify(&e)),
                    Ok(None) => break,
                    Err(_) => Err(timed_out.clone()),
                };
                let stop = next.is_err();
                // A closed channel means the caller went away: dropping the stream cancels the work.
                if tx.send(next).await.is_err() || stop {
                    break;
                }
            }
        });
        let planned = planned_rx
            .await
            .map_err(|_| QueryError::Internal("the query task ended early".into()))??;
        Ok(QueryRun {
            schema: planned.schema,
            datasets: planned.datasets,
            agreements: planned.agreements,
            disclosure: planned.disclosure,
            batches: rx,
            _slot: slot,
            _permit: permit,
        })
    }
}

impl QueryService {
    /// Runs a task on the query runtime (large stacks for planning, separate from the
    /// runtime serving HTTP) and waits for it.
    pub async fn run<F>(&self, task: F) -> Result<F::Output, QueryError>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::Internal("the query runtime has stopped".into()))?;
        runtime
            .spawn(task)
            .await
            .map_err(|e| QueryError::Internal(e.to_string()))
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

/// Everything one query needs, moved onto the query runtime.
struct Context {
    store: Arc<Store>,
    audit: Option<Arc<AuditLog>>,
    policies: Arc<Policies>,
    partner: Partner,
    purpose: String,
    today: chrono::NaiveDate,
    limits: QueryLimits,
    spill_dir: PathBuf,
    record_key: Arc<sdc::cellkey::RecordKey>,
    footers: session::FooterCache,
}

pub(crate) fn sql_error(e: DataFusionError) -> QueryError {
    let text = e.strip_backtrace();
    let text = text
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("This feature is not implemented: ");
    QueryError::Sql(text.chars().take(500).collect())
}

/// Maps an error raised while evaluating data to a message that names no value.
pub(crate) fn classify(e: &DataFusionError) -> QueryError {
    tracing::debug!(error = %e, "query execution error");
    use arrow::error::ArrowError as A;
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => QueryError::Memory,
        DataFusionError::ArrowError(a, _) => match a.as_ref() {
            A::DivideByZero => QueryError::Execution("division by zero"),
            // Spilling past the disk cap surfaces as an I/O error from the spill writer.
            A::IoError(..) => QueryError::Memory,
            A::CastError(_) | A::ParseError(_) => {
                QueryError::Execution("a value could not be converted to the requested type")
            }
            A::ArithmeticOverflow(_) | A::ComputeError(_) => {
                QueryError::Execution("arithmetic overflow")
            }
            _ => QueryError::Execution("an expression could not be evaluated"),
        },
        _ => QueryError::Execution("an expression could not be evaluated"),
    }
}

impl Context {
    async fn start(&self, sql: &str) -> Result<(Planned, SendableRecordBatchStream), QueryError> {
        let t0 = std::time::Instant::now();
        let ctx = session::locked_session(
            self.limits.memory_bytes,
            &self.spill_dir,
            self.limits.spill_bytes,
            self.limits.threads,
            &self.footers,
        )
        .map_err(|e| QueryError::Internal(e.to_string()))?;
        let state = ctx.state();
        let stmt = state
            .sql_to_statement(sql, &datafusion::config::Dialect::Generic)
            .map_err(sql_error)?;
        guard::check_statement(&stmt).map_err(QueryError::NotAllowed)?;
        let refs = state.resolve_table_references(&stmt).map_err(sql_error)?;
        let mut datasets = Vec::new();
        let mut agreements = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut controlled = HashMap::new();
        for r in refs {
            if r.schema().is_some() || r.catalog().is_some() {
                continue;
            }
            let name = r.table().to_owned();
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(provided) = self.provide(&ctx, &name).await? {
                ctx.register_table(name.as_str(), provided.table)
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
                datasets.push(provided.read);
                agreements.extend(provided.agreements);
                if let Some(c) = provided.controlled {
                    controlled.insert(name.clone(), c);
                }
            }
        }
        let t_tables = t0.elapsed();
        let state = ctx.state();
        let plan = state.statement_to_plan(stmt).await.map_err(sql_error)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|_| QueryError::NotAllowed("only read queries are allowed".into()))?;
        guard::check_plan(&plan).map_err(QueryError::NotAllowed)?;
        let (plan, disclosure) = if controlled.is_empty() {
            (plan, None)
        } else {
            let optimized = state.optimize(&plan).map_err(sql_error)?;
            let (plan, disclosure) = sdc::release(
                optimized,
                &state,
                &controlled,
                &self.record_key,
                self.limits.max_groups,
            )
            .await?;
            (plan, Some(disclosure))
        };
        let t_logical = t0.elapsed();
        let physical = state.create_physical_plan(&plan).await.map_err(sql_error)?;
        guard::check_physical(physical.as_ref()).map_err(QueryError::NotAllowed)?;
        tracing::debug!(
            tables_ms = t_tables.as_secs_f64() * 1000.0,
            logical_ms = t_logical.as_secs_f64() * 1000.0,
            physical_ms = t0.elapsed().as_secs_f64() * 1000.0,
            "query planned"
        );
        let schema = physical.schema();
        let stream = datafusion::physical_plan::execute_stream(physical, ctx.task_ctx())
            .map_err(|e| classify(&e))?;
        Ok((
            Planned {
                schema,
                datasets,
                agreements: agreements.into_iter().collect(),
                disclosure,
            },
            stream,
        ))
    }

    /// The table a caller sees under a name, or `None` if no agreement names it for them
    /// (then the name is unknown, exactly like a table that does not exist).
    async fn provide(
        &self,
        ctx: &SessionContext,
        name: &str,
    ) -> Result<Option<Provided>, QueryError> {
        if name == AUDIT_TABLE {
            return self.audit_table();
        }
        let Some(schema) = Schemas::builtin().get(name) else {
            return Ok(None);
        };
        let grants = match self
            .policies
            .read_grants(&self.partner, name, &self.purpose, self.today)
        {
            Ok(g) => g,
            Err(RefusalReason::NoAgreement) => return Ok(None),
            Err(reason @ RefusalReason::NotInForce { .. }) => {
                return Err(QueryError::Refused {
                    code: "agreement_not_in_force",
                    message: format!("{name}: {reason}"),
                });
            }
            Err(reason @ RefusalReason::PurposeNotCovered { .. }) => {
                return Err(QueryError::Refused {
                    code: "purpose_not_permitted",
                    message: format!("{name}: {reason}"),
                });
            }
        };
        let record: Vec<_> = grants
            .iter()
            .filter(|g| g.terms.access == Access::Record)
            .collect();
        // Record access wins where both are granted; otherwise the aggregate grants apply.
        let (chosen, controlled) = if record.is_empty() {
            let aggregate: Vec<_> = grants.iter().collect();
            let Some(person_column) = schema.person_column.clone() else {
                return Ok(None);
            };
            let controlled = sdc::Controlled {
                dataset: name.to_owned(),
                agreements: aggregate.iter().map(|g| g.agreement.clone()).collect(),
                min_count: aggregate
                    .iter()
                    .map(|g| u64::from(g.terms.min_count))
                    .max()
                    .unwrap_or(10),
                round_to: aggregate
                    .iter()
                    .map(|g| u64::from(g.terms.round_to))
                    .max()
                    .unwrap_or(5),
                person_column,
                pseudonyms: schema
                    .columns
                    .iter()
                    .filter(|c| c.pseudonym)
                    .map(|c| c.name.clone())
                    .collect(),
                domains: schema
                    .columns
                    .iter()
                    .filter_map(|c| Some((c.name.clone(), c.allowed.clone()?)))
                    .collect(),
            };
            (aggregate, Some(controlled))
        } else {
            (record, None)
        };
        let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let Some(combined) = CombinedView::of(&chosen, &columns) else {
            return Ok(None);
        };
        let mut rules = combined.rules;
        if let Some(c) = &controlled {
            // Under disclosure control the pseudonym is never shown, so it stays in the
            // table as a join key and the person count even where an agreement hides it.
            for (column, rule) in &mut rules {
                if c.pseudonyms.contains(column) {
                    *rule = None;
                }
            }
        }
        let view = TableView {
            scope: combined.scope,
            force_column: schema.force_column.clone(),
            rules,
        };
        let used = combined.agreements;
        let (inner, version): (Arc<dyn TableProvider>, Option<u64>) =
            if schema.level == DatasetLevel::Reference {
                (
                    reference_table().map_err(|e| QueryError::Internal(e.to_string()))?,
                    None,
                )
            } else {
                match self.store.table(name, None).await {
                    Ok(table) => {
                        table
                            .update_datafusion_session(&ctx.state())
                            .map_err(|e| QueryError::Internal(e.to_string()))?;
                        let provider = table
                            .table_provider()
                            .await
                            .map_err(|e| QueryError::Internal(e.to_string()))?;
                        (provider, table.version())
                    }
                    Err(StoreError::NotFound(_)) => {
                        let empty = MemTable::try_new(
                            Arc::new(concordat_store::arrow_schema(schema)),
                            vec![vec![]],
                        )
                        .map_err(|e| QueryError::Internal(e.to_string()))?;
                        (Arc::new(empty), None)
                    }
                    Err(e) => return Err(QueryError::Internal(e.to_string())),
                }
            };
        Ok(Some(Provided {
            table: Arc::new(PolicyTable::new(inner, view)),
            read: DatasetRead {
                dataset: name.to_owned(),
                version,
            },
            agreements: used,
            controlled,
        }))
    }
}

/// A table as one caller sees it.
struct Provided {
    table: Arc<dyn TableProvider>,
    read: DatasetRead,
    agreements: Vec<String>,
    /// Disclosure terms, when the caller may see it as aggregates only.
    controlled: Option<sdc::Controlled>,
}

const AUDIT_TABLE: &str = "audit_log";

impl Context {
    /// The audit events the caller's audit agreements show, as a table.
    fn audit_table(&self) -> Result<Option<Provided>, QueryError> {
        let Some(log) = &self.audit else {
            return Ok(None);
        };
        let view = match self
            .policies
            .audit_view(&self.partner, &self.purpose, self.today)
        {
            Ok(v) => v,
            Err(RefusalReason::NoAgreement) => return Ok(None),
            Err(reason) => {
                return Err(QueryError::Refused {
                    code: "purpose_not_permitted",
                    message: format!("{AUDIT_TABLE}: {reason}"),
                });
            }
        };
        let events = log
            .read(0, usize::MAX, &|e| view.allows(e.body.partner.as_deref()))
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let table = audit_batch(&events).map_err(|e| QueryError::Internal(e.to_string()))?;
        let agreements = self
            .policies
            .agreements()
            .iter()
            .filter(|a| {
                a.audit.is_some()
                    && a.in_force(self.today)
                    && a.recipients.contains(&self.partner.id, self.partner.kind)
            })
            .map(|a| a.id.clone())
            .collect();
        Ok(Some(Provided {
            table,
            read: DatasetRead {
                dataset: AUDIT_TABLE.into(),
                version: None,
            },
            agreements,
            controlled: None,
        }))
    }
}

fn audit_batch(
    events: &[concordat_store::audit::AuditEvent],
) -> datafusion::common::Result<Arc<dyn TableProvider>> {
    use arrow::array::{Int64Array, UInt64Array};
    let text = |f: &dyn Fn(&concordat_store::audit::AuditEvent) -> Option<String>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<StringArray>())
    };
    let json = |v: &dyn erased_json::Json| v.text();
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("time", DataType::Utf8, false),
        Field::new("subject", DataType::Utf8, true),
        Field::new("partner", DataType::Utf8, true),
        Field::new("roles", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("status", DataType::Int64, false),
        Field::new("code", DataType::Utf8, true),
        Field::new("datasets", DataType::Utf8, true),
        Field::new("agreements", DataType::Utf8, true),
        Field::new("purpose", DataType::Utf8, true),
        Field::new("sql", DataType::Utf8, true),
        Field::new("sql_sha256", DataType::Utf8, true),
        Field::new("rows", DataType::Int64, true),
        Field::new("bytes", DataType::Int64, true),
        Field::new("duration_ms", DataType::Int64, false),
        Field::new("hash", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(events.iter().map(|e| e.seq).collect::<UInt64Array>()),
        text(&|e| Some(e.time.clone())),
        text(&|e| e.body.subject.clone()),
        text(&|e| e.body.partner.clone()),
        text(&|e| Some(e.body.roles.join(","))),
        text(&|e| Some(e.body.action.clone())),
        text(&|e| Some(e.body.outcome.clone())),
        Arc::new(
            events
                .iter()
                .map(|e| i64::from(e.body.status))
                .collect::<Int64Array>(),
        ),
        text(&|e| e.body.code.clone()),
        text(&|e| Some(json(&e.body.datasets))),
        text(&|e| Some(e.body.agreements.join(","))),
        text(&|e| e.body.purpose.clone()),
        text(&|e| e.body.sql.clone()),
        text(&|e| e.body.sql_sha256.clone()),
        Arc::new(
            events
                .iter()
                .map(|e| e.body.rows.map(|r| r as i64))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            events
                .iter()
                .map(|e| e.body.bytes.map(|r| r as i64))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            events
                .iter()
                .map(|e| e.body.duration_ms as i64)
                .collect::<Int64Array>(),
        ),
        text(&|e| Some(e.hash.clone())),
    ];
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

mod erased_json {
    /// Anything serialisable, as JSON text.
    pub trait Json {
        fn text(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn text(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// The shipped `police_forces` table.
fn reference_table() -> datafusion::common::Result<Arc<dyn TableProvider>> {
    let forces = Reference::builtin().forces();
    let column = |f: &dyn Fn(&concordat_core::Force) -> String| -> ArrayRef {
        Arc::new(forces.iter().map(|x| Some(f(x))).collect::<StringArray>())
    };
    let names = [
        "pfa_code",
        "force_slug",
        "force_name",
        "region",
        "probation_region_code",
        "probation_region_name",
        "country",
    ];
    let cols: Vec<ArrayRef> = vec![
        column(&|f| f.pfa_code.to_string()),
        column(&|f| f.force_slug.clone()),
        column(&|f| f.force_name.clone()),
        column(&|f| f.region.clone()),
        column(&|f| f.probation_region_code.clone()),
        column(&|f| f.probation_region_name.clone()),
        column(&|f| f.country.clone()),
    ];
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}
