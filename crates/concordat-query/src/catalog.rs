//! The tables one caller gets in one query: each dataset the agreements let them read
//! for the purpose today, as a [`PolicyTable`] over its latest version, with the
//! disclosure terms when the access is aggregate-only; the audit trail as `audit_log` for
//! auditors; the shipped `police_forces`. A name no agreement grants is unknown, exactly
//! like a table that does not exist.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use concordat_core::{DatasetLevel, Reference, Schemas};
use concordat_policy::{Access, ForPurpose, RefusalReason};
use concordat_store::StoreError;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::execution::SessionState;

use crate::error::QueryError;
use crate::plan::Context;
use crate::policy_table::{PolicyTable, TableView};
use crate::sdc;
use crate::service::DatasetRead;

/// A table as one caller sees it.
pub(crate) struct Provided {
    pub(crate) table: Arc<dyn TableProvider>,
    pub(crate) read: DatasetRead,
    pub(crate) agreements: Vec<String>,
    /// Disclosure terms, when the caller may see it as aggregates only.
    pub(crate) controlled: Option<sdc::Controlled>,
}

/// The audit trail's table name.
pub const AUDIT_TABLE: &str = "audit_log";

/// Whether a Postgres client's statement looks at its catalog rather than at data: it
/// names `pg_catalog` or `information_schema` tables, or no table at all (`SELECT
/// version()`, `SELECT current_schema()`).
pub(crate) fn asks_catalog(refs: &[datafusion::common::TableReference]) -> bool {
    refs.is_empty()
        || refs.iter().any(|r| match r.schema() {
            Some(s) => {
                s.eq_ignore_ascii_case("pg_catalog") || s.eq_ignore_ascii_case("information_schema")
            }
            None => r.table().to_ascii_lowercase().starts_with("pg_"),
        })
}

impl Context {
    /// The table a caller sees under a name, or `None` if no agreement names it for them.
    pub(crate) async fn provide(
        &self,
        state: &SessionState,
        name: &str,
    ) -> Result<Option<Provided>, QueryError> {
        self.provide_in(Some(state), name).await
    }

    /// The table a caller sees under a name with its columns but no rows, for a client's
    /// look at its catalog: `None` when the caller may not read it today, for any reason.
    pub(crate) async fn provide_shape(&self, name: &str) -> Result<Option<Provided>, QueryError> {
        match self.provide_in(None, name).await {
            Err(QueryError::Refused { .. }) => Ok(None),
            other => other,
        }
    }

    /// Every name a caller might be given: the contract's datasets and the audit trail.
    pub(crate) fn visible_names(&self) -> Vec<String> {
        Schemas::builtin()
            .iter()
            .map(|s| s.name.to_string())
            .chain(std::iter::once(AUDIT_TABLE.to_owned()))
            .collect()
    }

    /// With a session, the table over its latest version; without, over no rows.
    async fn provide_in(
        &self,
        state: Option<&SessionState>,
        name: &str,
    ) -> Result<Option<Provided>, QueryError> {
        if name == AUDIT_TABLE {
            return self.audit_table(state.is_some());
        }
        let Some(schema) = Schemas::builtin().get(name) else {
            return Ok(None);
        };
        let dataset = &schema.name;
        let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let read = match self.policies.effective_read(
            &self.caller.partner,
            dataset,
            &columns,
            ForPurpose::One(&self.purpose),
            self.today,
        ) {
            Ok(r) => r,
            Err(RefusalReason::NoAgreement) => return Ok(None),
            Err(reason) => {
                return Err(QueryError::Refused {
                    code: reason.code(),
                    message: format!("{name}: {reason}"),
                });
            }
        };
        let controlled = match (read.access, read.terms) {
            (Access::Record, _) => None,
            (Access::Aggregate, terms) => {
                // Aggregate access to data without persons cannot be controlled: unknown.
                let Some(person_column) = schema.person_column.clone() else {
                    return Ok(None);
                };
                let terms = terms.unwrap_or(concordat_policy::DisclosureTerms::DEFAULT);
                Some(sdc::Controlled {
                    dataset: name.to_owned(),
                    agreements: concordat_policy::ids(read.agreements()),
                    min_count: terms.min_count,
                    round_to: terms.round_to,
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
                })
            }
        };
        let mut rules = read.view.rules.clone();
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
            scope: read.view.scope.clone(),
            force_column: schema.force_column.clone(),
            rules,
        };
        let empty = || -> Result<Arc<dyn TableProvider>, QueryError> {
            let table = MemTable::try_new(
                Arc::new(concordat_store::arrow_schema(schema)),
                vec![vec![]],
            )
            .map_err(QueryError::internal)?;
            Ok(Arc::new(table))
        };
        let (inner, version): (Arc<dyn TableProvider>, Option<u64>) =
            if let Some(state) = state.filter(|_| schema.level != DatasetLevel::Reference) {
                match self.store.table(name, None).await {
                    Ok(table) => {
                        let provider = self
                            .stored
                            .provider(name, &table, state)
                            .await
                            .map_err(QueryError::internal)?;
                        (provider, table.version())
                    }
                    Err(StoreError::NotFound(_)) => (empty()?, None),
                    Err(e) => return Err(QueryError::internal(e)),
                }
            } else if state.is_some() {
                (reference_table().map_err(QueryError::internal)?, None)
            } else {
                (empty()?, None)
            };
        Ok(Some(Provided {
            table: Arc::new(PolicyTable::new(inner, view)),
            read: DatasetRead {
                dataset: name.to_owned(),
                version,
            },
            agreements: concordat_policy::ids(read.agreements()),
            controlled,
        }))
    }

    /// The audit events the caller's audit agreements show, as a table (with no rows
    /// when `rows` is false).
    fn audit_table(&self, rows: bool) -> Result<Option<Provided>, QueryError> {
        let partner = &self.caller.partner;
        let view = match self.policies.audit_view(partner, &self.purpose, self.today) {
            Ok(v) => v,
            Err(RefusalReason::NoAgreement) => return Ok(None),
            Err(reason) => {
                return Err(QueryError::Refused {
                    code: reason.code(),
                    message: format!("{AUDIT_TABLE}: {reason}"),
                });
            }
        };
        let events = if rows {
            self.audit
                .read(0, usize::MAX, &|e| view.allows(e.body.partner.as_deref()))
                .map_err(QueryError::internal)?
        } else {
            Vec::new()
        };
        let table = audit_batch(&events).map_err(QueryError::internal)?;
        let agreements =
            concordat_policy::ids(&self.policies.audit_agreements(partner, self.today));
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
