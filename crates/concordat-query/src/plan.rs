//! Planning one query: the statement checked, the caller's tables registered, the plan
//! verified as a read, rewritten for disclosure control where it reads aggregate-only
//! data, and made physical.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use concordat_core::Caller;
use concordat_policy::Policies;
use concordat_store::Store;
use concordat_store::audit::AuditLog;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;

use crate::error::{QueryError, classify, sql_error};
use crate::service::DatasetRead;
use crate::{Dialect, Disclosure, QueryLimits, guard, sdc, session};

/// Everything one query needs, moved onto the query runtime.
pub(crate) struct Context {
    pub(crate) store: Arc<Store>,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) policies: Arc<Policies>,
    pub(crate) caller: Caller,
    pub(crate) purpose: concordat_core::Purpose,
    pub(crate) today: chrono::NaiveDate,
    pub(crate) limits: QueryLimits,
    pub(crate) spill_dir: PathBuf,
    pub(crate) record_key: Arc<sdc::cellkey::RecordKey>,
    pub(crate) footers: session::FooterCache,
    pub(crate) template: Arc<session::Template>,
    pub(crate) params: Vec<datafusion::scalar::ScalarValue>,
    pub(crate) dialect: Dialect,
    pub(crate) pg_catalogs: Arc<crate::pgcatalog::PgCatalogs>,
    pub(crate) stored: Arc<crate::stored::StoredVersions>,
    /// Partitions the query is planned for.
    pub(crate) partitions: usize,
}

/// What planning learnt.
#[derive(Clone)]
pub(crate) struct Planned {
    pub(crate) schema: SchemaRef,
    pub(crate) datasets: Vec<DatasetRead>,
    pub(crate) agreements: Vec<String>,
    pub(crate) disclosure: Option<Disclosure>,
    pub(crate) params: Vec<Option<DataType>>,
    /// True when two runs over the same table versions give the same answer: no function
    /// whose value depends on when or how often it runs.
    pub(crate) deterministic: bool,
}

/// Whether every function the plan calls gives the same value for the same arguments
/// (checked before the optimizer folds `now()` into a constant).
fn deterministic(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, Volatility};
    let mut fixed = true;
    let _ = plan.apply_with_subqueries(|node| {
        for e in node.expressions() {
            let _ = e.apply(|x| {
                if let Expr::ScalarFunction(f) = x
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    fixed = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(if fixed {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    fixed
}

/// Whether copies of a physical plan may run again, also while the first run goes on:
/// nothing in it is shared between its runs. Resetting a plan's state gives each run
/// its own work queues, hash tables and metrics, and a top-k sort its own dynamic
/// filter, which [`session::for_run`] then hands down to the scans of that copy (a hash
/// join makes its filter there too). Not everything is reset: a scalar subquery's
/// results are shared by every copy, and so is a min/max aggregate's dynamic filter, or
/// one already handed down into a scan. Plans with any of these are made again for each
/// run.
pub(crate) fn rerunnable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
    use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
    use datafusion::physical_plan::sorts::sort::SortExec;
    let mut shared = false;
    let _ = plan.apply(|node| {
        if node.name() == "ScalarSubqueryExec" {
            shared = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        // A sort's own dynamic filter is new in each reset copy: only its keys count.
        let mut roots = Vec::new();
        match node.downcast_ref::<SortExec>() {
            Some(sort) => roots.extend(sort.expr().iter().map(|k| k.expr.clone())),
            None => {
                let _ = node.apply_expressions(&mut |root| {
                    roots.push(root.clone());
                    Ok(TreeNodeRecursion::Continue)
                });
            }
        }
        for root in roots {
            let _ = root.apply(|e| {
                if e.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()
                    || e.downcast_ref::<ScalarSubqueryExpr>().is_some()
                {
                    shared = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(if shared {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    !shared
}

/// A question planned: what planning learnt, the physical plan and the task it runs in,
/// and the release it reads when it is disclosure-controlled.
pub(crate) struct Made {
    pub(crate) planned: Planned,
    pub(crate) physical: Arc<dyn ExecutionPlan>,
    pub(crate) task: Arc<TaskContext>,
    pub(crate) release: Option<sdc::Prepared>,
}

/// A plan made once and run again for the same question over the same table versions.
pub(crate) enum Reusable {
    /// A plan run again as it is.
    Plain(Arc<dyn ExecutionPlan>),
    /// A disclosure-controlled plan: its release runs again (the per-person plan over
    /// the data, the rules over its groups), and the plan made over the released cells
    /// reads the new ones.
    Release {
        release: Arc<sdc::Prepared>,
        outer: Arc<dyn ExecutionPlan>,
    },
}

impl Reusable {
    /// Whether every part may run again, also while the first run goes on.
    pub(crate) fn rerunnable(&self) -> bool {
        match self {
            Reusable::Plain(p) => rerunnable(p),
            Reusable::Release { release, outer } => {
                rerunnable(release.per_person()) && rerunnable(outer) && release.rebindable(outer)
            }
        }
    }

    /// The bytes the plan holds beyond its expressions: the released cells it reads.
    pub(crate) fn held_bytes(&self) -> usize {
        match self {
            Reusable::Plain(_) => 0,
            Reusable::Release { release, outer } => release.held_bytes(outer),
        }
    }
}

impl Context {
    /// Plans and starts the query; returns the plan in the form that can run again.
    pub(crate) async fn start(
        &self,
        sql: &str,
    ) -> Result<(Planned, Reusable, SendableRecordBatchStream), QueryError> {
        let made = self.plan(sql).await?;
        let physical =
            session::for_run(made.physical.clone(), &made.task).map_err(QueryError::internal)?;
        let stream = datafusion::physical_plan::execute_stream(physical, made.task)
            .map_err(|e| classify(&e))?;
        let reusable = match made.release {
            None => Reusable::Plain(made.physical),
            Some(release) => Reusable::Release {
                release: Arc::new(release),
                outer: made.physical,
            },
        };
        Ok((made.planned, reusable, stream))
    }

    /// Runs a plan made earlier for the same question over the same table versions, on
    /// a copy whose running state (shared work queues, dynamic filters, metrics) is new,
    /// in a task context of its own. A disclosure-controlled plan runs its release again
    /// first, and returns the new release's record; `None` when the plan cannot read the
    /// new released cells and must be made again.
    pub(crate) async fn rerun(
        &self,
        plan: &Reusable,
    ) -> Result<Option<(Option<Disclosure>, SendableRecordBatchStream)>, QueryError> {
        let reset = |p: &Arc<dyn ExecutionPlan>| {
            datafusion::physical_plan::execution_plan::reset_plan_states(p.clone())
                .map_err(QueryError::internal)
        };
        let task = self
            .template
            .fresh_task(self.limits.memory_bytes)
            .map_err(QueryError::internal)?;
        let (physical, disclosure) = match plan {
            Reusable::Plain(p) => (reset(p)?, None),
            Reusable::Release { release, outer } => {
                let per_person = session::for_run(reset(release.per_person())?, &task)
                    .map_err(QueryError::internal)?;
                let (released, disclosure) = release.run(per_person, &task).await?;
                match release.rebind(outer, &released)? {
                    Some(p) => (p, Some(disclosure)),
                    None => return Ok(None),
                }
            }
        };
        let physical = session::for_run(physical, &task).map_err(QueryError::internal)?;
        let stream =
            datafusion::physical_plan::execute_stream(physical, task).map_err(|e| classify(&e))?;
        Ok(Some((disclosure, stream)))
    }

    /// Plans the query without running it.
    pub(crate) async fn plan(&self, sql: &str) -> Result<Made, QueryError> {
        let t0 = std::time::Instant::now();
        let mut state = self.template.state().map_err(QueryError::internal)?;
        state.config_mut().options_mut().execution.target_partitions = self.partitions;
        let task = self
            .template
            .task(&state, self.limits.memory_bytes)
            .map_err(QueryError::internal)?;
        let t_session = t0.elapsed();
        let dialect = match self.dialect {
            Dialect::Standard => datafusion::config::Dialect::Generic,
            Dialect::Postgres => datafusion::config::Dialect::PostgreSQL,
        };
        let stmt = state
            .sql_to_statement(sql, &dialect)
            .map_err(|e| guard::refuse_by_keyword(sql).unwrap_or_else(|| sql_error(e)))?;
        guard::check_statement(&stmt).map_err(QueryError::NotAllowed)?;
        let refs = state.resolve_table_references(&stmt).map_err(sql_error)?;
        if self.dialect == Dialect::Postgres && crate::catalog::asks_catalog(&refs) {
            return self.plan_catalog(sql).await;
        }
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
            if let Some(provided) = self.provide(&state, &name).await? {
                state
                    .schema_for_ref(name.as_str())
                    .and_then(|schema| schema.register_table(name.clone(), provided.table))
                    .map_err(QueryError::internal)?;
                datasets.push(provided.read);
                agreements.extend(provided.agreements);
                if let Some(c) = provided.controlled {
                    controlled.insert(name.clone(), c);
                }
            }
        }
        let t_tables = t0.elapsed();
        let plan = state.statement_to_plan(stmt).await.map_err(sql_error)?;
        let (plan, params) = self.bind(plan)?;
        verify_read(&plan)?;
        let deterministic = deterministic(&plan);
        let (plan, disclosure, release) = if controlled.is_empty() {
            (plan, None, None)
        } else {
            let optimized = state.optimize(&plan).map_err(sql_error)?;
            let (plan, disclosure, release) = sdc::release(
                optimized,
                &state,
                &task,
                &controlled,
                &self.record_key,
                self.limits.max_groups,
            )
            .await?;
            (plan, Some(disclosure), Some(release))
        };
        let t_logical = t0.elapsed();
        let physical = state.create_physical_plan(&plan).await.map_err(sql_error)?;
        guard::check_physical(physical.as_ref()).map_err(QueryError::NotAllowed)?;
        tracing::debug!(
            session_ms = t_session.as_secs_f64() * 1000.0,
            tables_ms = t_tables.as_secs_f64() * 1000.0,
            logical_ms = t_logical.as_secs_f64() * 1000.0,
            physical_ms = t0.elapsed().as_secs_f64() * 1000.0,
            partitions = self.partitions,
            "query planned"
        );
        let schema = physical.schema();
        Ok(Made {
            planned: Planned {
                schema,
                datasets,
                agreements: agreements.into_iter().collect(),
                disclosure,
                params,
                deterministic,
            },
            physical,
            task,
            release,
        })
    }

    /// Puts the request's values in the plan's placeholders, each cast to the type its
    /// place needs; with no values (a describe), the placeholders stay and their types are
    /// returned in order.
    fn bind(&self, plan: LogicalPlan) -> Result<(LogicalPlan, Vec<Option<DataType>>), QueryError> {
        let found = plan.get_parameter_types().map_err(sql_error)?;
        let mut types: Vec<Option<DataType>> = Vec::new();
        for (name, ty) in found {
            let Some(place) = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=65_535).contains(n))
            else {
                return Err(QueryError::Sql(format!(
                    "placeholders are written $1, $2, ...; `{}` is not one",
                    name.chars().take(32).collect::<String>()
                )));
            };
            if types.len() < place {
                types.resize(place, None);
            }
            types[place - 1] = ty;
        }
        if self.params.is_empty() {
            return Ok((plan, types));
        }
        if self.params.len() != types.len() {
            return Err(QueryError::Sql(format!(
                "the query has {} placeholders; {} values were given",
                types.len(),
                self.params.len()
            )));
        }
        let mut values = Vec::with_capacity(self.params.len());
        for (i, (value, ty)) in self.params.iter().zip(&types).enumerate() {
            let value = match ty {
                Some(ty) if value.data_type() != *ty => value.cast_to(ty).map_err(|_| {
                    QueryError::Sql(format!(
                        "the value given for ${} is not a valid {ty}",
                        i + 1
                    ))
                })?,
                _ => value.clone(),
            };
            values.push(value);
        }
        let plan = plan.with_param_values(values).map_err(sql_error)?;
        Ok((plan, types))
    }

    /// Every table the caller may query under the purpose today, with its columns and no
    /// rows, in name order.
    pub(crate) async fn shapes(
        &self,
    ) -> Result<Vec<(String, crate::catalog::Provided)>, QueryError> {
        let mut out = Vec::new();
        for name in self.visible_names() {
            if let Some(provided) = self.provide_shape(&name).await? {
                out.push((name, provided));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Plans a Postgres client's look at its catalog: a session holding the caller's
    /// datasets, under this purpose, as empty tables with the columns it may see, and the
    /// `pg_catalog` and `information_schema` built from them. No data is read.
    async fn plan_catalog(&self, sql: &str) -> Result<Made, QueryError> {
        let ctx = session::catalog_session(
            self.limits.memory_bytes,
            &self.spill_dir,
            self.limits.spill_bytes,
            &self.footers,
            self.purpose.as_str(),
        )
        .map_err(QueryError::internal)?;
        let mut agreements = BTreeSet::new();
        let mut tables = std::collections::BTreeMap::new();
        for (name, provided) in self.shapes().await? {
            tables.insert(name.clone(), provided.table.schema());
            ctx.register_table(name.as_str(), provided.table)
                .map_err(QueryError::internal)?;
            agreements.extend(provided.agreements);
        }
        let visible = crate::pgcatalog::Visible::new(self.purpose.as_str(), tables);
        self.pg_catalogs
            .install(&ctx, self.caller.partner.id.as_str(), &visible, self.today)
            .map_err(QueryError::internal)?;
        let mut statements = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new()
            .parse(sql)
            .map_err(|e| QueryError::Sql(e.to_string().chars().take(500).collect()))?;
        if statements.len() != 1 {
            return Err(QueryError::NotAllowed(
                "send one statement at a time".into(),
            ));
        }
        let stmt = datafusion::sql::parser::Statement::Statement(Box::new(statements.remove(0)));
        guard::check_statement(&stmt).map_err(QueryError::NotAllowed)?;
        let state = ctx.state();
        let plan = state.statement_to_plan(stmt).await.map_err(sql_error)?;
        let (plan, params) = self.bind(plan)?;
        verify_read(&plan)?;
        let physical = state.create_physical_plan(&plan).await.map_err(sql_error)?;
        Ok(Made {
            planned: Planned {
                schema: physical.schema(),
                datasets: Vec::new(),
                agreements: agreements.into_iter().collect(),
                disclosure: None,
                params,
                deterministic: false,
            },
            physical,
            task: ctx.task_ctx(),
            release: None,
        })
    }
}

/// Refuses a plan that is not a plain read.
fn verify_read(plan: &LogicalPlan) -> Result<(), QueryError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|_| QueryError::NotAllowed("only read queries are allowed".into()))?;
    guard::check_plan(plan).map_err(QueryError::NotAllowed)
}
