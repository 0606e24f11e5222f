//! Row-by-row checks of an uploaded file against its dataset's schema and the uploader's
//! row scope, batch by batch, so memory does not grow with the file.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Date32Type, Float64Type, Int32Type, Int64Type};
use chrono::NaiveDate;
use concordat_core::schema::{ColumnType, Condition, Format, ReferenceKind, Rule, RuleKind};
use concordat_core::{DatasetSchema, Quarter, Reference};
use concordat_policy::ScopeFilter;

use crate::violation::{Violation, Violations};

const EPOCH_DAYS_CE: i32 = 719_163;

fn days(date: &NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce() - EPOCH_DAYS_CE
}

/// Bounds of a column, as f64 (numbers) or days since the epoch (dates).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: Option<f64>,
    max: Option<f64>,
}

fn bound(v: &Option<serde_json::Value>, t: ColumnType) -> Option<f64> {
    match (v, t) {
        (Some(serde_json::Value::String(s)), ColumnType::Date32) => {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| f64::from(days(&d)))
        }
        (Some(v), _) => v.as_f64(),
        (None, _) => None,
    }
}

/// A compiled condition over one column of the row.
enum Cond {
    Bool { col: usize, value: bool },
    Text { col: usize, value: String },
    EndsWith { col: usize, suffix: String },
}

impl Cond {
    fn compile(c: &Condition, schema: &DatasetSchema) -> Option<Cond> {
        let col = schema.column_index(&c.column)?;
        match (&c.equals, &c.ends_with) {
            (Some(serde_json::Value::Bool(b)), _) => Some(Cond::Bool { col, value: *b }),
            (Some(serde_json::Value::String(s)), _) => Some(Cond::Text {
                col,
                value: s.clone(),
            }),
            (_, Some(s)) => Some(Cond::EndsWith {
                col,
                suffix: s.clone(),
            }),
            _ => None,
        }
    }

    /// `None` when the tested value is null: the rule does not apply.
    fn eval(&self, cols: &[ArrayRef], row: usize) -> Option<bool> {
        match self {
            Cond::Bool { col, value } => {
                let a = cols[*col].as_boolean_opt()?;
                a.is_valid(row).then(|| a.value(row) == *value)
            }
            Cond::Text { col, value } => {
                let a = cols[*col].as_string_opt::<i32>()?;
                a.is_valid(row).then(|| a.value(row) == value)
            }
            Cond::EndsWith { col, suffix } => {
                let a = cols[*col].as_string_opt::<i32>()?;
                a.is_valid(row)
                    .then(|| a.value(row).ends_with(suffix.as_str()))
            }
        }
    }
}

/// A number in a numeric or date column, or `None` when null.
fn number(a: &ArrayRef, row: usize) -> Option<f64> {
    if a.is_null(row) {
        return None;
    }
    match a.data_type() {
        DataType::Int32 => Some(f64::from(a.as_primitive::<Int32Type>().value(row))),
        // Stored counts stay far below 2^53, where f64 is exact.
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(row) as f64),
        DataType::Float64 => Some(a.as_primitive::<Float64Type>().value(row)),
        DataType::Date32 => Some(f64::from(a.as_primitive::<Date32Type>().value(row))),
        _ => None,
    }
}

/// Checks batches of one file and accumulates rows, periods and violations.
pub struct RowChecker<'a> {
    schema: &'a DatasetSchema,
    scope: &'a ScopeFilter,
    scope_agreements: String,
    enums: Vec<Option<HashSet<String>>>,
    bounds: Vec<Bounds>,
    reference: &'static Reference,
    pfa_region: HashMap<String, String>,
    rules: Vec<(&'a Rule, Vec<Cond>)>,
    unique: HashMap<String, HashSet<u128>>,
    period_col: Option<usize>,
    force_col: Option<usize>,
    /// Data rows seen so far.
    pub rows: u64,
    /// Distinct values of the period column.
    pub periods: BTreeSet<String>,
    /// What was wrong.
    pub violations: Violations,
}

impl<'a> RowChecker<'a> {
    /// A checker for a dataset and the uploader's scope.
    pub fn new(schema: &'a DatasetSchema, scope: &'a ScopeFilter, agreements: &[String]) -> Self {
        let reference = Reference::builtin();
        let rules = schema
            .rules
            .iter()
            .map(|r| {
                let conds = match &r.kind {
                    RuleKind::PositiveIff { when, .. }
                    | RuleKind::NullIff { when, .. }
                    | RuleKind::RangeWhen { when, .. } => {
                        Cond::compile(when, schema).into_iter().collect()
                    }
                    _ => Vec::new(),
                };
                (r, conds)
            })
            .collect();
        RowChecker {
            schema,
            scope,
            scope_agreements: agreements.join(", "),
            enums: schema
                .columns
                .iter()
                .map(|c| c.allowed.as_ref().map(|v| v.iter().cloned().collect()))
                .collect(),
            bounds: schema
                .columns
                .iter()
                .map(|c| Bounds {
                    min: bound(&c.min, c.data_type),
                    max: bound(&c.max, c.data_type),
                })
                .collect(),
            reference,
            pfa_region: reference
                .forces()
                .iter()
                .map(|f| (f.pfa_code.to_string(), f.probation_region_code.clone()))
                .collect(),
            rules,
            unique: HashMap::new(),
            period_col: schema
                .period_column
                .as_deref()
                .and_then(|c| schema.column_index(c)),
            force_col: schema
                .force_column
                .as_deref()
                .and_then(|c| schema.column_index(c)),
            rows: 0,
            periods: BTreeSet::new(),
            violations: Violations::default(),
        }
    }

    fn violation(
        &mut self,
        row: usize,
        column: Option<&str>,
        rule: &str,
        message: impl FnOnce() -> String,
    ) {
        let row = self.rows + row as u64 + 1;
        if self.violations.wants_detail() {
            self.violations.push(Violation {
                row: Some(row),
                column: column.map(str::to_owned),
                rule: rule.to_owned(),
                message: message(),
            });
        } else {
            self.violations.count_only(Some(row), column, rule);
        }
    }

    /// Checks one batch whose columns are in schema order and canonical types.
    pub fn check(&mut self, cols: &[ArrayRef]) {
        let n = cols.first().map_or(0, |c| c.len());
        for (i, col) in self.schema.columns.iter().enumerate() {
            self.check_column(i, col, &cols[i], n);
        }
        for r in 0..self.rules.len() {
            self.check_rule(r, cols, n);
        }
        if let Some(f) = self.force_col {
            let a = cols[f].as_string::<i32>();
            for row in 0..n {
                if a.is_valid(row) {
                    let v = a.value(row);
                    if self.reference.force(v).is_some() && !self.scope.allows(v) {
                        let agreements = self.scope_agreements.clone();
                        let column = self.schema.columns[f].name.clone();
                        self.violation(row, Some(&column), "row_scope", || {
                            format!("this row's force area is outside the rows your agreements ({agreements}) let you upload")
                        });
                    }
                }
            }
        }
        if let Some(p) = self.period_col {
            let a = cols[p].as_string::<i32>();
            for v in a.iter().flatten() {
                if !self.periods.contains(v)
                    && self.periods.len() < 10_000
                    && (Quarter::parse(v).is_some()
                        || concordat_core::FinancialYear::parse(v).is_some())
                {
                    self.periods.insert(v.to_owned());
                }
            }
        }
        self.rows += n as u64;
    }

    fn check_column(
        &mut self,
        i: usize,
        col: &concordat_core::ColumnSchema,
        a: &ArrayRef,
        n: usize,
    ) {
        let name = col.name.as_str();
        if !col.nullable && a.null_count() > 0 {
            for row in 0..n {
                if a.is_null(row) {
                    self.violation(row, Some(name), "not_null", || {
                        format!("`{name}` may not be null")
                    });
                }
            }
        }
        match col.data_type {
            ColumnType::Utf8 => {
                let s = a.as_string::<i32>();
                let enums = self.enums[i].take();
                for row in 0..n {
                    if s.is_null(row) {
                        continue;
                    }
                    let v = s.value(row);
                    if let Some(set) = &enums
                        && !set.contains(v)
                    {
                        let allowed = col.allowed.as_deref().unwrap_or_default().join(", ");
                        self.violation(row, Some(name), "enum", || {
                            format!("`{name}` must be one of: {allowed}")
                        });
                    }
                    match col.format {
                        Some(Format::Quarter) if Quarter::parse(v).is_none() => {
                            self.violation(row, Some(name), "format", || {
                                format!("`{name}` must be a quarter written YYYYQn, e.g. 2024Q3")
                            });
                        }
                        Some(Format::FinancialYear)
                            if concordat_core::FinancialYear::parse(v).is_none() =>
                        {
                            self.violation(row, Some(name), "format", || format!("`{name}` must be a financial year written YYYY-YY, e.g. 2024-25"));
                        }
                        Some(Format::Hex64)
                            if !(v.len() == 64
                                && v.bytes()
                                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))) =>
                        {
                            self.violation(row, Some(name), "format", || format!("`{name}` must be a pseudonym of 64 lowercase hexadecimal characters"));
                        }
                        _ => {}
                    }
                    match col.reference {
                        Some(ReferenceKind::PfaCode) if self.reference.force(v).is_none() => {
                            self.violation(row, Some(name), "reference", || format!("`{name}` must be one of the 43 police force area codes (see police_forces)"));
                        }
                        Some(ReferenceKind::ProbationRegionCode)
                            if !self.reference.is_probation_region(v) =>
                        {
                            self.violation(row, Some(name), "reference", || format!("`{name}` must be a probation region code (N03, N07, N50 to N59)"));
                        }
                        _ => {}
                    }
                }
                self.enums[i] = enums;
            }
            ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64 | ColumnType::Date32 => {
                let b = self.bounds[i];
                if b.min.is_none() && b.max.is_none() && col.data_type != ColumnType::Float64 {
                    return;
                }
                for row in 0..n {
                    let Some(v) = number(a, row) else { continue };
                    let below = b.min.is_some_and(|m| v < m);
                    let above = b.max.is_some_and(|m| v > m);
                    if below || above || !v.is_finite() {
                        let (lo, hi) = (&col.min, &col.max);
                        self.violation(row, Some(name), "range", || {
                            match (lo, hi) {
                                (Some(lo), Some(hi)) => {
                                    format!("`{name}` must lie between {lo} and {hi}")
                                }
                                (Some(lo), None) => format!("`{name}` must be at least {lo}"),
                                (None, Some(hi)) => format!("`{name}` must be at most {hi}"),
                                (None, None) => format!("`{name}` must be a finite number"),
                            }
                            .replace('"', "")
                        });
                    }
                }
            }
            ColumnType::Boolean => {}
        }
    }

    fn check_rule(&mut self, r: usize, cols: &[ArrayRef], n: usize) {
        let (rule, conds) = &self.rules[r];
        let (rule, name) = (*rule, rule.name.clone());
        let message = rule.message.clone();
        let idx = |c: &str| self.schema.column_index(c).unwrap_or(0);
        let mut bad: Vec<(usize, String)> = Vec::new();
        match &rule.kind {
            RuleKind::PositiveIff { column, .. } => {
                let a = &cols[idx(column)];
                for row in 0..n {
                    if let (Some(v), Some(c)) = (
                        number(a, row),
                        conds.first().and_then(|c| c.eval(cols, row)),
                    ) && (v > 0.0) != c
                    {
                        bad.push((row, column.clone()));
                    }
                }
            }
            RuleKind::NullIff { column, .. } => {
                let a = &cols[idx(column)];
                for row in 0..n {
                    if let Some(c) = conds.first().and_then(|c| c.eval(cols, row))
                        && a.is_null(row) != c
                    {
                        bad.push((row, column.clone()));
                    }
                }
            }
            RuleKind::Ordered { columns } => {
                let arrays: Vec<&ArrayRef> = columns.iter().map(|c| &cols[idx(c)]).collect();
                for row in 0..n {
                    let mut prev: Option<f64> = None;
                    for (k, a) in arrays.iter().enumerate() {
                        if let Some(v) = number(a, row) {
                            if prev.is_some_and(|p| v < p) {
                                bad.push((row, columns[k].clone()));
                                break;
                            }
                            prev = Some(v);
                        }
                    }
                }
            }
            RuleKind::PfaInProbationRegion {
                pfa_column,
                region_column,
            } => {
                let p = cols[idx(pfa_column)].as_string::<i32>();
                let g = cols[idx(region_column)].as_string::<i32>();
                for row in 0..n {
                    if p.is_valid(row)
                        && g.is_valid(row)
                        && self
                            .pfa_region
                            .get(p.value(row))
                            .is_some_and(|want| want != g.value(row))
                        && self.reference.is_probation_region(g.value(row))
                    {
                        bad.push((row, region_column.clone()));
                    }
                }
            }
            RuleKind::MemberOfGroup {
                column,
                group_column,
                groups,
            } => {
                let v = cols[idx(column)].as_string::<i32>();
                let g = cols[idx(group_column)].as_string::<i32>();
                for row in 0..n {
                    if v.is_valid(row)
                        && g.is_valid(row)
                        && groups
                            .get(g.value(row))
                            .is_some_and(|members| !members.iter().any(|m| m == v.value(row)))
                    {
                        bad.push((row, column.clone()));
                    }
                }
            }
            RuleKind::RangeWhen {
                columns, min, max, ..
            } => {
                for row in 0..n {
                    if conds.first().and_then(|c| c.eval(cols, row)) != Some(true) {
                        continue;
                    }
                    for c in columns {
                        if number(&cols[idx(c)], row).is_some_and(|v| v < *min || v > *max) {
                            bad.push((row, c.clone()));
                        }
                    }
                }
            }
            RuleKind::NotGreater { column, than } => {
                let (a, b) = (&cols[idx(column)], &cols[idx(than)]);
                for row in 0..n {
                    if let (Some(x), Some(y)) = (number(a, row), number(b, row))
                        && x > y
                    {
                        bad.push((row, column.clone()));
                    }
                }
            }
            RuleKind::Unique { columns } => {
                let arrays: Vec<&ArrayRef> = columns.iter().map(|c| &cols[idx(c)]).collect();
                let seen = self.unique.entry(name.clone()).or_default();
                for row in 0..n {
                    let key = row_key(&arrays, row);
                    if !seen.insert(key) {
                        bad.push((row, columns.last().cloned().unwrap_or_default()));
                    }
                }
            }
        }
        for (row, column) in bad {
            self.violation(row, Some(&column), &name, || message.clone());
        }
    }
}

/// A 128-bit hash of a row's values in the given columns.
fn row_key(arrays: &[&ArrayRef], row: usize) -> u128 {
    let mut h1 = std::collections::hash_map::DefaultHasher::new();
    let mut h2 = std::collections::hash_map::DefaultHasher::new();
    0xC0C0_u16.hash(&mut h2);
    for a in arrays {
        let part = match a.data_type() {
            DataType::Utf8 => a
                .as_string::<i32>()
                .is_valid(row)
                .then(|| a.as_string::<i32>().value(row).to_owned()),
            _ => number(a, row).map(|v| v.to_string()),
        };
        part.hash(&mut h1);
        part.hash(&mut h2);
    }
    (u128::from(h1.finish()) << 64) | u128::from(h2.finish())
}
