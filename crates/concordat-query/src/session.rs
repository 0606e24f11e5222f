//! A locked-down DataFusion session: no table functions, no file or URL access, no
//! recursive CTEs, a memory pool with a capped spill directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProvider, MemoryCatalogProviderList,
    MemorySchemaProvider,
};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

/// Knows only the stores the gateway registers for its own tables; in particular, not
/// the local filesystem that DataFusion's default registry maps `file://` to.
#[derive(Debug, Default)]
pub struct RestrictedRegistry {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

fn key(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.authority())
}

impl ObjectStoreRegistry for RestrictedRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut stores = self
            .stores
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stores.insert(key(url), store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let stores = self
            .stores
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stores
            .get(&key(url))
            .cloned()
            .ok_or_else(|| DataFusionError::Plan("this location is not available".into()))
    }
}

/// Parquet footers read by earlier queries, shared by every session: stored data files
/// never change (a new version writes new files), so a footer read once stays right.
pub type FooterCache = Arc<datafusion::execution::cache::cache_manager::FileMetadataCache>;

/// A footer cache holding up to `bytes` of metadata.
pub fn footer_cache(bytes: usize) -> Result<FooterCache> {
    use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
    let manager =
        CacheManager::try_new(&CacheManagerConfig::default().with_metadata_cache_limit(bytes))?;
    Ok(manager.get_file_metadata_cache())
}

/// Builds a session with the limits of one query.
pub fn locked_session(
    memory_bytes: usize,
    spill_dir: &Path,
    spill_bytes: u64,
    target_partitions: usize,
    footers: &FooterCache,
) -> Result<SessionContext> {
    build(
        query_config(target_partitions),
        memory_bytes,
        spill_dir,
        spill_bytes,
        footers,
    )
}

/// Builds the session a Postgres client's catalog lookups run in: one partition, the
/// `information_schema` on, and the database (the purpose) as its catalog's name. Its
/// plans, like the template's, go through [`for_run`].
pub fn catalog_session(
    memory_bytes: usize,
    spill_dir: &Path,
    spill_bytes: u64,
    footers: &FooterCache,
    database: &str,
) -> Result<SessionContext> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema(database, "public")
        .with_target_partitions(1);
    let ctx = build(config, memory_bytes, spill_dir, spill_bytes, footers)?;
    Ok(SessionContext::new_with_state(without_run_rule(
        ctx.state(),
    )?))
}

/// The runtime of one query: its own memory pool and spill space, the shared stores
/// and footer cache.
fn runtime(
    memory_bytes: usize,
    spill_dir: &Path,
    spill_bytes: u64,
    footers: &FooterCache,
    stores: Arc<RestrictedRegistry>,
) -> Result<Arc<RuntimeEnv>> {
    let disk = DiskManagerBuilder::default()
        .with_mode(DiskManagerMode::Directories(vec![spill_dir.to_path_buf()]))
        .with_max_temp_directory_size(spill_bytes);
    RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(memory_bytes)))
        .with_disk_manager_builder(disk)
        .with_object_store_registry(stores)
        .with_cache_manager(
            datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                .with_file_metadata_cache(Some(footers.clone())),
        )
        .build_arc()
}

/// The physical optimiser's last rewrite, left out of the template's plans and applied
/// to each run's copy instead: it hands the dynamic filters of top-k sorts and hash joins
/// down to the scans below them, and each run's copy must hand down filters of its own.
const RUN_RULE: &str = "FilterPushdown(Post)";

/// A plan made by a template's session, made ready for one run: the dynamic filters of
/// its top-k sorts and hash joins handed down to the scans beneath them. `plan` is a
/// plan that has not run, or a copy with its running state reset
/// (`reset_plan_states`), so that its filters are this run's own.
pub fn for_run(plan: Arc<dyn ExecutionPlan>, task: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
    datafusion::physical_optimizer::filter_pushdown::FilterPushdown::new_post_optimization()
        .optimize(plan, task.session_config().options())
}

/// `state` without the physical optimiser's [`RUN_RULE`]: its plans go through
/// [`for_run`] before each run.
fn without_run_rule(state: SessionState) -> Result<SessionState> {
    let rules: Vec<_> = state
        .physical_optimizers()
        .iter()
        .filter(|rule| rule.name() != RUN_RULE)
        .cloned()
        .collect();
    if rules.len() + 1 != state.physical_optimizers().len() {
        return Err(DataFusionError::Internal(format!(
            "the physical optimiser has no single {RUN_RULE} rule"
        )));
    }
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rules(rules)
        .build())
}

/// What every query's session shares, built once: the configuration, the functions
/// (without table functions), the optimizer rules, the registry of the gateway's table
/// stores and the footer cache. Building a session from scratch registers every
/// function again, which cost more than planning a small query.
#[derive(Debug)]
pub struct Template {
    state: SessionState,
    stores: Arc<RestrictedRegistry>,
    footers: FooterCache,
    spill_dir: PathBuf,
    spill_bytes: u64,
}

impl Template {
    /// The template of query sessions with `target_partitions`, spilling to `spill_dir`.
    pub fn new(
        target_partitions: usize,
        spill_dir: &Path,
        spill_bytes: u64,
        footers: &FooterCache,
    ) -> Result<Template> {
        let stores = Arc::new(RestrictedRegistry::default());
        let ctx = build_with(
            query_config(target_partitions),
            runtime(0, spill_dir, spill_bytes, footers, stores.clone())?,
        )?;
        Ok(Template {
            state: without_run_rule(ctx.state())?,
            stores,
            footers: footers.clone(),
            spill_dir: spill_dir.to_path_buf(),
            spill_bytes,
        })
    }

    /// The session of one query: the template's configuration and functions with a
    /// catalog of its own, empty, so no query sees the tables another registered.
    pub fn state(&self) -> Result<SessionState> {
        let mut state = self.state.clone();
        let options = state.config().options();
        let (catalog, schema) = (
            options.catalog.default_catalog.clone(),
            options.catalog.default_schema.clone(),
        );
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let default = Arc::new(MemoryCatalogProvider::new());
        default.register_schema(&schema, Arc::new(MemorySchemaProvider::new()))?;
        catalogs.register_catalog(catalog, default);
        state.register_catalog_list(catalogs);
        Ok(state)
    }

    /// The task context of a plan made earlier, with the template's configuration.
    pub fn fresh_task(&self, memory_bytes: usize) -> Result<Arc<TaskContext>> {
        self.task(&self.state, memory_bytes)
    }

    /// The task context a planned query runs in: its own memory pool of `memory_bytes`.
    /// Plans hold their functions, so the context needs no function registry.
    pub fn task(&self, state: &SessionState, memory_bytes: usize) -> Result<Arc<TaskContext>> {
        let runtime = runtime(
            memory_bytes,
            &self.spill_dir,
            self.spill_bytes,
            &self.footers,
            self.stores.clone(),
        )?;
        Ok(Arc::new(TaskContext::new(
            None,
            state.session_id().to_owned(),
            state.config().clone(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            runtime,
        )))
    }
}

fn query_config(target_partitions: usize) -> SessionConfig {
    SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(target_partitions.max(1))
        .with_batch_size(8192)
}

fn build(
    config: SessionConfig,
    memory_bytes: usize,
    spill_dir: &Path,
    spill_bytes: u64,
    footers: &FooterCache,
) -> Result<SessionContext> {
    let stores = Arc::new(RestrictedRegistry::default());
    build_with(
        config,
        runtime(memory_bytes, spill_dir, spill_bytes, footers, stores)?,
    )
}

fn build_with(mut config: SessionConfig, runtime: Arc<RuntimeEnv>) -> Result<SessionContext> {
    config.options_mut().execution.enable_recursive_ctes = false;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    let functions: Vec<String> = ctx.state().table_functions().keys().cloned().collect();
    for name in functions {
        ctx.deregister_udtf(&name);
    }
    if !ctx.state().table_functions().is_empty() {
        return Err(DataFusionError::Internal(
            "table functions could not be removed".into(),
        ));
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::datasource::MemTable;

    #[tokio::test]
    async fn sessions_from_one_template_share_no_tables_and_no_table_functions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let footers = footer_cache(1 << 20).expect("footers");
        let template = Template::new(2, dir.path(), 1 << 20, &footers).expect("template");
        let (a, b) = (
            template.state().expect("state"),
            template.state().expect("state"),
        );
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        let table = Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("table"));
        a.schema_for_ref("secret")
            .and_then(|s| s.register_table("secret".into(), table))
            .expect("register");
        let sees = |state: &SessionState| {
            state
                .schema_for_ref("secret")
                .is_ok_and(|s| s.table_exist("secret"))
        };
        assert!(sees(&a));
        assert!(!sees(&b), "another query's session sees the table");
        assert!(
            !sees(&template.state().expect("state")),
            "a later session sees it"
        );
        assert!(a.table_functions().is_empty() && b.table_functions().is_empty());
        // Each query's task runs in a memory pool of its own.
        let t = template.task(&a, 1000).expect("task");
        let pool = t.runtime_env().memory_pool.clone();
        let r = datafusion::execution::memory_pool::MemoryConsumer::new("x").register(&pool);
        assert!(r.try_grow(2000).is_err(), "the query's limit holds");
        let u = template.task(&b, 1000).expect("task");
        assert_eq!(u.runtime_env().memory_pool.reserved(), 0);
    }
}
