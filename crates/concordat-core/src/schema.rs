//! Dataset schemas: the columns, types and rules every upload is checked against.
//!
//! The JSON files in `schemas/` are the source; they are compiled into the binary so a
//! running gateway cannot drift from the contract it was built with.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::names::{DatasetName, PartnerKind};

const BUILTIN: [(&str, &str); 8] = [
    (
        "reoffending_cohort",
        include_str!("../../../schemas/reoffending_cohort.json"),
    ),
    (
        "court_timeliness",
        include_str!("../../../schemas/court_timeliness.json"),
    ),
    (
        "force_performance",
        include_str!("../../../schemas/force_performance.json"),
    ),
    (
        "force_resources",
        include_str!("../../../schemas/force_resources.json"),
    ),
    (
        "force_context",
        include_str!("../../../schemas/force_context.json"),
    ),
    (
        "police_forces",
        include_str!("../../../schemas/police_forces.json"),
    ),
    (
        "force_efficiency",
        include_str!("../../../schemas/force_efficiency.json"),
    ),
    (
        "most_similar_groups",
        include_str!("../../../schemas/most_similar_groups.json"),
    ),
];

/// Arrow type of a column, as written in schema files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// UTF-8 text.
    Utf8,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// true / false.
    Boolean,
    /// Days since 1970-01-01.
    Date32,
}

/// A textual format checked on every value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `YYYYQn`.
    Quarter,
    /// `YYYY-YY`.
    FinancialYear,
    /// 64 lowercase hexadecimal characters (a keyed-hash pseudonym).
    Hex64,
}

/// A lookup in the shipped reference geography.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceKind {
    /// One of the 43 police force area codes.
    PfaCode,
    /// One of the probation region codes.
    ProbationRegionCode,
}

/// How sensitive a dataset's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetLevel {
    /// One row per person: carries a pseudonym, eligible for aggregate-only sharing.
    Record,
    /// Already aggregated by its provider.
    Aggregate,
    /// Shipped with Concordat.
    Reference,
    /// Computed by the gateway from other datasets.
    Derived,
}

/// One column of a dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSchema {
    /// Column name.
    pub name: String,
    /// Arrow type.
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    /// Whether nulls are allowed.
    pub nullable: bool,
    /// What the column means.
    pub description: String,
    /// Allowed values (text columns).
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// Lowest allowed value: a number, or an ISO date for date columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<serde_json::Value>,
    /// Highest allowed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<serde_json::Value>,
    /// Textual format of every value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Reference lookup every value must pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceKind>,
    /// A person (or case) pseudonym: a join key, never disclosed to aggregate recipients.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pseudonym: bool,
}

impl ColumnSchema {
    /// Whether this is text of few distinct values (an enum, a reference or a period),
    /// which the upload worker decodes, checks and writes as a dictionary.
    pub fn is_coded_text(&self) -> bool {
        self.data_type == ColumnType::Utf8
            && !self.pseudonym
            && (self.allowed.is_some()
                || self.reference.is_some()
                || matches!(self.format, Some(Format::Quarter | Format::FinancialYear)))
    }
}

/// A condition on one column of the same row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The column tested.
    pub column: String,
    /// Holds when the value equals this (text or boolean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    /// Holds when the text value ends with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_with: Option<String>,
}

/// A rule across the columns of a row, or across rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleKind {
    /// `column > 0` exactly when `when` holds.
    PositiveIff { column: String, when: Condition },
    /// `column` is null exactly when `when` holds.
    NullIff { column: String, when: Condition },
    /// The columns are in non-decreasing order, skipping nulls.
    Ordered { columns: Vec<String> },
    /// The force area lies in the probation region.
    PfaInProbationRegion {
        pfa_column: String,
        region_column: String,
    },
    /// `column`'s value is one of `groups[group_column's value]`.
    MemberOfGroup {
        column: String,
        group_column: String,
        groups: BTreeMap<String, Vec<String>>,
    },
    /// When `when` holds, each of `columns` lies in `min..=max`.
    RangeWhen {
        columns: Vec<String>,
        min: f64,
        max: f64,
        when: Condition,
    },
    /// `column <= than`.
    NotGreater { column: String, than: String },
    /// No two rows share these columns' values.
    Unique { columns: Vec<String> },
}

/// A named rule with the message shown when a row breaks it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rule {
    /// Rule name, reported in violations.
    pub name: String,
    /// What it checks.
    #[serde(flatten)]
    pub kind: RuleKind,
    /// What a violation means, for the uploader.
    pub message: String,
}

/// The schema of one dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSchema {
    /// Dataset name, also its SQL table name.
    pub name: DatasetName,
    /// Human title.
    pub title: String,
    /// What one row is and where it comes from.
    pub description: String,
    /// Record, aggregate, reference or derived.
    pub level: DatasetLevel,
    /// Kinds of partner that provide it (empty for reference and derived data).
    pub provider_kinds: Vec<PartnerKind>,
    /// Column holding the reporting period; replace_periods works on it.
    #[serde(default)]
    pub period_column: Option<String>,
    /// Column holding the person pseudonym (record-level data).
    #[serde(default)]
    pub person_column: Option<String>,
    /// Column holding the police force area code (row scope by force).
    #[serde(default)]
    pub force_column: Option<String>,
    /// Column holding the probation region code (row scope by region).
    #[serde(default)]
    pub probation_region_column: Option<String>,
    /// Columns in their canonical order.
    pub columns: Vec<ColumnSchema>,
    /// Cross-field and cross-row rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl DatasetSchema {
    /// Parses and checks one schema file's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<DatasetSchema, CoreError> {
        let schema: DatasetSchema =
            serde_json::from_str(text).map_err(|e| CoreError::definition(file, e.to_string()))?;
        schema.check().map_err(|m| CoreError::definition(file, m))?;
        Ok(schema)
    }

    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&ColumnSchema> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Position of the column with this name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Whether partners may upload it.
    pub fn is_uploadable(&self) -> bool {
        !self.provider_kinds.is_empty()
    }

    fn check(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for c in &self.columns {
            if !seen.insert(c.name.as_str()) {
                return Err(format!("column `{}` is declared twice", c.name));
            }
            let numeric = matches!(
                c.data_type,
                ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64
            );
            for (bound, v) in [("min", &c.min), ("max", &c.max)] {
                match (v, c.data_type) {
                    (None, _) => {}
                    (Some(v), _) if numeric && v.is_number() => {}
                    (Some(serde_json::Value::String(s)), ColumnType::Date32)
                        if chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => {}
                    _ => {
                        return Err(format!(
                            "column `{}`: `{bound}` does not fit its type",
                            c.name
                        ));
                    }
                }
            }
            if (c.allowed.is_some() || c.format.is_some() || c.reference.is_some())
                && c.data_type != ColumnType::Utf8
            {
                return Err(format!(
                    "column `{}`: enum, format and reference need type utf8",
                    c.name
                ));
            }
        }
        let has = |name: &str| -> Result<(), String> {
            if seen.contains(name) {
                Ok(())
            } else {
                Err(format!("names unknown column `{name}`"))
            }
        };
        for name in [
            &self.period_column,
            &self.person_column,
            &self.force_column,
            &self.probation_region_column,
        ]
        .into_iter()
        .flatten()
        {
            has(name)?;
        }
        for rule in &self.rules {
            let cols: Vec<&str> = match &rule.kind {
                RuleKind::PositiveIff { column, when } | RuleKind::NullIff { column, when } => {
                    vec![column, &when.column]
                }
                RuleKind::Ordered { columns } | RuleKind::Unique { columns } => {
                    columns.iter().map(String::as_str).collect()
                }
                RuleKind::RangeWhen { columns, when, .. } => columns
                    .iter()
                    .map(String::as_str)
                    .chain([when.column.as_str()])
                    .collect(),
                RuleKind::PfaInProbationRegion {
                    pfa_column,
                    region_column,
                } => vec![pfa_column, region_column],
                RuleKind::MemberOfGroup {
                    column,
                    group_column,
                    ..
                } => vec![column, group_column],
                RuleKind::NotGreater { column, than } => vec![column, than],
            };
            for c in cols {
                has(c).map_err(|e| format!("rule `{}` {e}", rule.name))?;
            }
        }
        Ok(())
    }
}

/// Every dataset schema the gateway knows.
#[derive(Debug)]
pub struct Schemas {
    by_name: BTreeMap<String, DatasetSchema>,
}

impl Schemas {
    /// The schemas compiled into this build.
    pub fn builtin() -> &'static Schemas {
        static S: OnceLock<Schemas> = OnceLock::new();
        S.get_or_init(|| {
            let mut by_name = BTreeMap::new();
            for (name, text) in BUILTIN {
                // Covered by the schema tests; a failure is a build defect.
                let schema = DatasetSchema::parse(&format!("schemas/{name}.json"), text)
                    .unwrap_or_else(|e| panic!("{e}"));
                by_name.insert(name.to_owned(), schema);
            }
            Schemas { by_name }
        })
    }

    /// The schema of a dataset.
    pub fn get(&self, name: &str) -> Option<&DatasetSchema> {
        self.by_name.get(name)
    }

    /// All schemas, by name.
    pub fn iter(&self) -> impl Iterator<Item = &DatasetSchema> {
        self.by_name.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_loads_and_matches_the_builtin() {
        let dir = &format!(
            "{}/../../schemas",
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
        );
        let mut files = 0;
        for entry in std::fs::read_dir(dir).expect("schemas dir") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).expect("read");
            let schema = DatasetSchema::parse(&path.display().to_string(), &text).expect("valid");
            let builtin = Schemas::builtin()
                .get(schema.name.as_str())
                .expect("builtin");
            assert_eq!(builtin.columns.len(), schema.columns.len());
        }
        assert_eq!(files, 8);
        assert_eq!(Schemas::builtin().iter().count(), 8);
    }

    #[test]
    fn contract_columns_are_present() {
        let s = Schemas::builtin();
        let reo = s.get("reoffending_cohort").expect("reoffending");
        assert_eq!(reo.level, DatasetLevel::Record);
        assert_eq!(reo.person_column.as_deref(), Some("person_id"));
        assert_eq!(reo.period_column.as_deref(), Some("cohort_quarter"));
        assert!(reo.column("person_id").is_some_and(|c| c.pseudonym));
        let court = s.get("court_timeliness").expect("court");
        assert_eq!(
            court.column("completion_date").map(|c| c.nullable),
            Some(true)
        );
        let perf = s.get("force_performance").expect("perf");
        let ind = perf
            .column("indicator")
            .and_then(|c| c.allowed.clone())
            .expect("enum");
        assert!(ind.contains(&"knife_offences".to_owned()));
        assert!(
            s.get("force_efficiency")
                .is_some_and(|e| !e.is_uploadable())
        );
    }

    #[test]
    fn a_rule_naming_an_unknown_column_is_refused_with_the_file_named() {
        let text = Schemas::builtin()
            .get("force_resources")
            .map(|s| serde_json::to_string(s).expect("json"))
            .expect("schema")
            .replace(
                "\"than\":\"recorded_crime\"",
                "\"than\":\"recorded_crimes\"",
            );
        let err = DatasetSchema::parse("bad.json", &text)
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("bad.json") && err.contains("recorded_crimes"),
            "{err}"
        );
    }
}
