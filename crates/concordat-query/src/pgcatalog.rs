//! The catalog a Postgres client looks itself up in (`pg_catalog`, `information_schema`,
//! `current_database()`, `pg_table_is_visible`...), from `datafusion-pg-catalog`, built
//! over the caller's own datasets and columns, never over anything else.
//!
//! Clients look a table up in one statement and its columns in the next, by object id
//! (psql's `\d`), so the ids must not change between statements: one catalog provider,
//! with its id cache, is kept per (partner, purpose, day) and reused while what that
//! caller may see is unchanged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    self as pgc, PgCatalogSchemaProvider, PgCatalogStaticTables,
};

/// The one schema a caller's datasets are in.
const SCHEMA: &str = "public";
/// Catalog providers kept at most; beyond, the cache starts again.
const MAX_KEPT: usize = 4096;

/// What one caller may see under one purpose: table names and their visible columns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Visible {
    database: String,
    tables: Arc<BTreeMap<String, SchemaRef>>,
}

impl Visible {
    pub(crate) fn new(database: &str, tables: BTreeMap<String, SchemaRef>) -> Visible {
        Visible {
            database: database.to_owned(),
            tables: Arc::new(tables),
        }
    }
}

#[async_trait]
impl CatalogInfo for Visible {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        Ok(vec![self.database.clone()])
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        // The system schemas are listed too (with no tables of their own here): clients
        // join types and functions to `pg_catalog`'s namespace to name them.
        Ok((catalog == self.database).then(|| {
            vec![
                "information_schema".to_owned(),
                "pg_catalog".to_owned(),
                SCHEMA.to_owned(),
            ]
        }))
    }

    async fn table_names(
        &self,
        catalog: &str,
        schema: &str,
    ) -> Result<Option<Vec<String>>, DataFusionError> {
        if catalog != self.database {
            return Ok(None);
        }
        Ok(Some(if schema == SCHEMA {
            self.tables.keys().cloned().collect()
        } else {
            Vec::new()
        }))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>, DataFusionError> {
        if catalog != self.database || schema != SCHEMA {
            return Ok(None);
        }
        Ok(self.tables.get(table).cloned())
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>, DataFusionError> {
        Ok(self
            .table_schema(catalog, schema, table)
            .await?
            .map(|_| TableType::Base))
    }
}

type Provider = PgCatalogSchemaProvider<Visible, EmptyContextProvider>;
/// Whose catalog: partner, purpose, day.
type Whose = (String, String, chrono::NaiveDate);

/// The catalog providers kept between statements, and the static `pg_catalog` tables
/// (types, functions, keywords) decoded once.
#[derive(Default)]
pub(crate) struct PgCatalogs {
    statics: OnceLock<Arc<PgCatalogStaticTables>>,
    kept: Mutex<HashMap<Whose, (Visible, Arc<Provider>)>>,
}

impl std::fmt::Debug for PgCatalogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCatalogs").finish_non_exhaustive()
    }
}

impl PgCatalogs {
    fn statics(&self) -> Result<Arc<PgCatalogStaticTables>, DataFusionError> {
        if let Some(s) = self.statics.get() {
            return Ok(s.clone());
        }
        let mut made = PgCatalogStaticTables::try_new()?;
        with_function_oids(&mut made)?;
        let made = Arc::new(made);
        Ok(self.statics.get_or_init(|| made).clone())
    }

    /// The provider for this caller, purpose and day, kept while what they see is the same.
    fn provider(
        &self,
        partner: &str,
        visible: &Visible,
        today: chrono::NaiveDate,
    ) -> Result<Arc<Provider>, DataFusionError> {
        let key = (partner.to_owned(), visible.database.clone(), today);
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, provider)) = kept.get(&key)
            && seen == visible
        {
            return Ok(provider.clone());
        }
        let provider = Arc::new(Provider::try_new(
            visible.clone(),
            self.statics()?,
            EmptyContextProvider,
        )?);
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(key, (visible.clone(), provider.clone()));
        Ok(provider)
    }

    /// Puts `pg_catalog` and the functions Postgres clients call into a session whose
    /// default catalog is `visible`'s database.
    pub(crate) fn install(
        &self,
        ctx: &SessionContext,
        partner: &str,
        visible: &Visible,
        today: chrono::NaiveDate,
    ) -> Result<(), DataFusionError> {
        use pgc::{
            array_bounds_udf, format_type, has_privilege_udf, pg_get_expr_udf, quote_ident_udf,
        };
        let provider: Arc<dyn SchemaProvider> = self.provider(partner, visible, today)?;
        ctx.catalog(&visible.database)
            .ok_or_else(|| DataFusionError::Internal("the session has no catalog".into()))?
            .register_schema("pg_catalog", provider)?;
        let udfs = [
            pgc::create_current_database_udf(&visible.database),
            pgc::create_current_schema_udf(),
            pgc::create_current_schemas_udf(),
            pgc::create_pg_get_userbyid_udf(),
            has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
            pgc::create_pg_table_is_visible(),
            format_type::create_format_type_udf(),
            pgc::create_session_user_udf(),
            pg_get_expr_udf::create_pg_get_expr_udf(),
            pgc::create_pg_get_partkeydef_udf(),
            pgc::create_pg_relation_is_publishable_udf(),
            pgc::create_pg_get_statisticsobjdef_columns_udf(),
            pgc::create_pg_encoding_to_char_udf(),
            pgc::create_pg_backend_pid_udf(),
            pgc::create_pg_relation_size_udf(),
            pgc::create_pg_total_relation_size_udf(),
            pgc::create_pg_stat_get_numscans(),
            pgc::create_pg_get_constraintdef(),
            pgc::create_pg_get_partition_ancestors_udf(),
            quote_ident_udf::create_quote_ident_udf(),
            quote_ident_udf::create_parse_ident_udf(),
            array_bounds_udf::create_array_upper_udf(),
            array_bounds_udf::create_array_lower_udf(),
        ];
        for udf in udfs {
            ctx.register_udf(udf);
        }
        {
            use datafusion::arrow::datatypes::DataType::{Int32, Utf8};
            use datafusion::scalar::ScalarValue;
            let visible = ScalarValue::Boolean(Some(true));
            let no_comment = ScalarValue::Utf8(None);
            ctx.register_udf(constant("pg_type_is_visible", vec![Int32], visible.clone()));
            ctx.register_udf(constant("pg_function_is_visible", vec![Int32], visible));
            ctx.register_udf(constant(
                "obj_description",
                vec![Int32, Utf8],
                no_comment.clone(),
            ));
            ctx.register_udf(constant(
                "col_description",
                vec![Int32, Int32],
                no_comment.clone(),
            ));
            ctx.register_udf(constant("shobj_description", vec![Int32, Utf8], no_comment));
        }
        // Postgres' object-id type names (`regclass`, `regtype`...) as types the planner knows.
        let state = ctx.state_ref();
        let existing = state.read().clone();
        let with_types =
            datafusion::execution::session_state::SessionStateBuilder::new_from_existing(existing)
                .with_type_planner(Arc::new(pgc::oid_type_planner::PgOidTypePlanner))
                .build();
        *state.write() = with_types;
        Ok(())
    }
}

/// `pg_type`'s function columns (`typinput`, `typreceive`, ...) as the object ids of the
/// functions they name, as in Postgres, where a `regproc` is an oid: clients join them to
/// `pg_proc.oid` (Npgsql, under Power BI, does when it loads types, and a name compared
/// with an oid fails the whole query). A name with no function is 0, Postgres' `-`.
fn with_function_oids(statics: &mut PgCatalogStaticTables) -> Result<(), DataFusionError> {
    use datafusion::arrow::array::{Array, ArrayRef, Int32Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut oid_of: HashMap<String, i32> = HashMap::new();
    for batch in statics.pg_proc.data() {
        let names = batch
            .column_by_name("proname")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let oids = batch
            .column_by_name("oid")
            .and_then(|c| c.as_any().downcast_ref::<Int32Array>());
        let (Some(names), Some(oids)) = (names, oids) else {
            return Ok(());
        };
        for i in 0..batch.num_rows() {
            oid_of
                .entry(names.value(i).to_owned())
                .or_insert(oids.value(i));
        }
    }
    let schema = statics.pg_type.schema();
    let is_regproc = |f: &Field| {
        f.data_type() == &DataType::Utf8
            && f.metadata().get("pg.oid_alias").map(String::as_str) == Some("regproc")
    };
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if is_regproc(f) {
                Field::new(f.name(), DataType::Int32, f.is_nullable()).with_metadata(
                    [("pg.oid_alias".to_owned(), "oid".to_owned())]
                        .into_iter()
                        .collect(),
                )
            } else {
                f.as_ref().clone()
            }
        })
        .collect();
    let changed = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let mut bytes = Vec::new();
    {
        let mut w = datafusion::arrow::ipc::writer::FileWriter::try_new(&mut bytes, &changed)?;
        for batch in statics.pg_type.data() {
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
            for (column, field) in batch.columns().iter().zip(schema.fields()) {
                let names = column.as_any().downcast_ref::<StringArray>();
                columns.push(match names {
                    Some(names) if is_regproc(field) => Arc::new(
                        names
                            .iter()
                            .map(|n| n.map(|n| oid_of.get(n).copied().unwrap_or(0)))
                            .collect::<Int32Array>(),
                    ),
                    _ => column.clone(),
                });
            }
            w.write(&RecordBatch::try_new(changed.clone(), columns)?)?;
        }
        w.finish()?;
    }
    // A static table is made from Arrow IPC only.
    statics.pg_type = Arc::new(pgc::ArrowTable::from_ipc_data(bytes)?);
    Ok(())
}

/// A function clients call for decoration that has one answer here: visibility
/// (`pg_type_is_visible`: true, since the catalog holds only what the caller may see) and
/// comments (`obj_description`: none). psql's `\dT` and `\df` and DBeaver ask them.
fn constant(
    name: &str,
    inputs: Vec<datafusion::arrow::datatypes::DataType>,
    answer: datafusion::scalar::ScalarValue,
) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    let output = answer.data_type();
    create_udf(
        name,
        inputs,
        output,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            Ok(match args.first() {
                Some(ColumnarValue::Array(a)) => {
                    ColumnarValue::Array(answer.to_array_of_size(a.len())?)
                }
                _ => ColumnarValue::Scalar(answer.clone()),
            })
        }),
    )
}
