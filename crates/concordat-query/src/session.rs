//! A locked-down DataFusion session: no table functions, no file or URL access, no
//! recursive CTEs, a memory pool with a capped spill directory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
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
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(target_partitions.max(1))
        .with_batch_size(8192);
    build(config, memory_bytes, spill_dir, spill_bytes, footers)
}

/// Builds the session a Postgres client's catalog lookups run in: one partition, the
/// `information_schema` on, and the database (the purpose) as its catalog's name.
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
    build(config, memory_bytes, spill_dir, spill_bytes, footers)
}

fn build(
    mut config: SessionConfig,
    memory_bytes: usize,
    spill_dir: &Path,
    spill_bytes: u64,
    footers: &FooterCache,
) -> Result<SessionContext> {
    config.options_mut().execution.enable_recursive_ctes = false;
    let disk = DiskManagerBuilder::default()
        .with_mode(DiskManagerMode::Directories(vec![spill_dir.to_path_buf()]))
        .with_max_temp_directory_size(spill_bytes);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(memory_bytes)))
        .with_disk_manager_builder(disk)
        .with_object_store_registry(Arc::new(RestrictedRegistry::default()))
        .with_cache_manager(
            datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                .with_file_metadata_cache(Some(footers.clone())),
        )
        .build_arc()?;
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
