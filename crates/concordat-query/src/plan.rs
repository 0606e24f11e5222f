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
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::context::SQLOptions;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::error::{QueryError, classify, sql_error};
use crate::service::DatasetRead;
use crate::{Disclosure, QueryLimits, guard, sdc, session};

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
}

/// What planning learnt.
pub(crate) struct Planned {
    pub(crate) schema: SchemaRef,
    pub(crate) datasets: Vec<DatasetRead>,
    pub(crate) agreements: Vec<String>,
    pub(crate) disclosure: Option<Disclosure>,
}

impl Context {
    /// Plans and starts the query.
    pub(crate) async fn start(
        &self,
        sql: &str,
    ) -> Result<(Planned, SendableRecordBatchStream), QueryError> {
        let (planned, physical, ctx) = self.plan(sql).await?;
        let stream = datafusion::physical_plan::execute_stream(physical, ctx.task_ctx())
            .map_err(|e| classify(&e))?;
        Ok((planned, stream))
    }

    /// Plans the query without running it.
    pub(crate) async fn plan(
        &self,
        sql: &str,
    ) -> Result<(Planned, Arc<dyn ExecutionPlan>, SessionContext), QueryError> {
        let t0 = std::time::Instant::now();
        let ctx = session::locked_session(
            self.limits.memory_bytes,
            &self.spill_dir,
            self.limits.spill_bytes,
            self.limits.threads,
            &self.footers,
        )
        .map_err(QueryError::internal)?;
        let t_session = t0.elapsed();
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
                    .map_err(QueryError::internal)?;
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
            session_ms = t_session.as_secs_f64() * 1000.0,
            tables_ms = t_tables.as_secs_f64() * 1000.0,
            logical_ms = t_logical.as_secs_f64() * 1000.0,
            physical_ms = t0.elapsed().as_secs_f64() * 1000.0,
            "query planned"
        );
        let schema = physical.schema();
        Ok((
            Planned {
                schema,
                datasets,
                agreements: agreements.into_iter().collect(),
                disclosure,
            },
            physical,
            ctx,
        ))
    }
}
