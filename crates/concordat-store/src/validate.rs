//! Checks of an uploaded file against its dataset's schema and the uploader's row scope,
//! batch by batch, so memory does not grow with the file. Each rule is a kernel over the
//! batch's Arrow arrays: enums and references are set membership (each distinct value
//! tested once), ranges are comparison kernels, cross-field rules are boolean masks; the
//! rows that break a rule are gathered from its mask.

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Scalar, StringArray,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::kernels::cmp;
use arrow::compute::{and, not, or};
use arrow::datatypes::{DataType, Float64Type, Int32Type};
use arrow::error::ArrowError;
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

    /// Whether each row meets the condition; null where the tested value is null (then
    /// the rule does not apply).
    fn mask(&self, cols: &[ArrayRef]) -> Result<BooleanArray, ArrowError> {
        match self {
            Cond::Bool { col, value } => cmp::eq(&cols[*col], &BooleanArray::new_scalar(*value)),
            Cond::Text { col, value } => Ok(Text::of(&cols[*col])?.mask(|v| v == value)),
            Cond::EndsWith { col, suffix } => {
                Ok(Text::of(&cols[*col])?.mask(|v| v.ends_with(suffix.as_str())))
            }
        }
    }
}

/// A numeric or date column as floating point (dates as days since the epoch).
fn floats(a: &ArrayRef) -> Result<Float64Array, ArrowError> {
    let a = match a.data_type() {
        DataType::Date32 => arrow::compute::cast(a, &DataType::Int32)?,
        _ => a.clone(),
    };
    // Stored counts stay far below 2^53, where f64 is exact.
    Ok(arrow::compute::cast(&a, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

fn scalar(v: f64) -> Scalar<Float64Array> {
    Float64Array::new_scalar(v)
}

/// A test of one text value.
type TextTest = fn(&str) -> bool;

/// A mask from a test of each distinct text value of a batch (each tested once). Runs of
/// one value (as decoded from a dictionary or a sorted column) are not even looked up.
fn text_mask(s: &StringArray, test: impl Fn(&str) -> bool) -> BooleanArray {
    let mut memo: HashMap<&str, bool, foldhash::fast::RandomState> = HashMap::default();
    let mut last: Option<(&str, bool)> = None;
    s.iter()
        .map(|v| {
            v.map(|v| match last {
                Some((l, r)) if l == v => r,
                _ => {
                    let r = *memo.entry(v).or_insert_with(|| test(v));
                    last = Some((v, r));
                    r
                }
            })
        })
        .collect()
}

/// A text column as decoded: plain strings, or `Int32` keys into a dictionary of them.
#[derive(Clone, Copy)]
enum Text<'a> {
    Plain(&'a StringArray),
    Coded(&'a Int32Array, &'a StringArray),
}

impl<'a> Text<'a> {
    fn of(a: &'a ArrayRef) -> Result<Text<'a>, ArrowError> {
        match a.data_type() {
            DataType::Utf8 => Ok(Text::Plain(a.as_string::<i32>())),
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let d = a.as_dictionary::<Int32Type>();
                Ok(Text::Coded(d.keys(), d.values().as_string::<i32>()))
            }
            t => Err(ArrowError::InvalidArgumentError(format!(
                "a text column decoded as {t}"
            ))),
        }
    }

    fn len(&self) -> usize {
        match self {
            Text::Plain(s) => s.len(),
            Text::Coded(k, _) => k.len(),
        }
    }

    /// The value of row `i`.
    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Text::Plain(s) => s.is_valid(i).then(|| s.value(i)),
            Text::Coded(k, v) => {
                if !k.is_valid(i) {
                    return None;
                }
                let key = usize::try_from(k.value(i)).ok()?;
                (key < v.len() && v.is_valid(key)).then(|| v.value(key))
            }
        }
    }

    /// An identity of row `i`'s value that is cheap to compare (the key when coded).
    fn id(&self, i: usize) -> Option<usize> {
        match self {
            Text::Plain(_) => None,
            Text::Coded(k, _) => k.is_valid(i).then(|| k.value(i) as usize),
        }
    }

    /// A mask from a test of each distinct value (null where the row is null): coded
    /// columns test each dictionary value once and map the keys.
    fn mask(&self, test: impl Fn(&str) -> bool) -> BooleanArray {
        match self {
            Text::Plain(s) => text_mask(s, test),
            Text::Coded(keys, values) => {
                let per_value: Vec<bool> = values.iter().map(|v| v.is_some_and(&test)).collect();
                let k = keys.values();
                let bits = BooleanBuffer::collect_bool(k.len(), |i| {
                    usize::try_from(k[i])
                        .ok()
                        .and_then(|key| per_value.get(key).copied())
                        .unwrap_or(false)
                });
                BooleanArray::new(bits, keys.nulls().cloned())
            }
        }
    }

    /// The distinct values present (for a coded column, those some row refers to).
    fn present(&self, mut each: impl FnMut(&str)) {
        match self {
            Text::Plain(s) => {
                let mut last: Option<&str> = None;
                for v in s.iter().flatten() {
                    if last != Some(v) {
                        each(v);
                        last = Some(v);
                    }
                }
            }
            Text::Coded(keys, values) => {
                let mut used = vec![false; values.len()];
                for k in keys.iter().flatten() {
                    if let Some(u) = usize::try_from(k).ok().and_then(|k| used.get_mut(k)) {
                        *u = true;
                    }
                }
                for (i, u) in used.into_iter().enumerate() {
                    if u && values.is_valid(i) {
                        each(values.value(i));
                    }
                }
            }
        }
    }
}

/// A mask from a test of each row's pair of text values (null where either is null);
/// each distinct pair is tested once when both columns are coded, and runs of one pair
/// are not looked up again.
fn pair_mask(a: Text, b: Text, test: impl Fn(&str, &str) -> bool) -> BooleanArray {
    let mut memo: HashMap<(usize, usize), bool, foldhash::fast::RandomState> = HashMap::default();
    let mut last: Option<((&str, &str), bool)> = None;
    (0..a.len())
        .map(|i| {
            if let (Some(x), Some(y)) = (a.id(i), b.id(i)) {
                if let Some(r) = memo.get(&(x, y)) {
                    return Some(*r);
                }
                let (p, q) = (a.get(i)?, b.get(i)?);
                let r = test(p, q);
                memo.insert((x, y), r);
                return Some(r);
            }
            let (p, q) = (a.get(i)?, b.get(i)?);
            Some(match last {
                Some((l, r)) if l == (p, q) => r,
                _ => {
                    let r = test(p, q);
                    last = Some(((p, q), r));
                    r
                }
            })
        })
        .collect()
}

/// Rows whose value is not a pseudonym (64 lowercase hexadecimal characters). The whole
/// value buffer is tested at once; rows are looked at one by one only if it fails.
fn hex64_mask(t: Text) -> BooleanArray {
    if let Text::Plain(s) = t {
        let offsets = s.value_offsets();
        let all_64 = offsets.windows(2).all(|w| w[1] - w[0] == 64);
        let start = offsets.first().copied().unwrap_or(0) as usize;
        let end = offsets.last().copied().unwrap_or(0) as usize;
        let bytes = s.values().get(start..end).unwrap_or_default();
        if all_64 && all_lower_hex(bytes) {
            return BooleanArray::new(BooleanBuffer::new_unset(s.len()), s.nulls().cloned());
        }
        return s.iter().map(|v| v.map(|v| !is_pseudonym(v))).collect();
    }
    t.mask(|v| !is_pseudonym(v))
}

/// Whether every byte is a lowercase hexadecimal digit: blocks of 64 bytes tested
/// without branching (so the compiler tests many at once), stopping at a bad block.
fn all_lower_hex(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        let bad = block
            .iter()
            .fold(0u8, |bad, &b| bad | u8::from(!lower_hex(b)));
        if bad != 0 {
            return false;
        }
    }
    blocks.remainder().iter().copied().all(lower_hex)
}

/// Whether a byte is a lowercase hexadecimal digit.
fn lower_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

/// Whether a value is a pseudonym: 64 lowercase hexadecimal characters.
fn is_pseudonym(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(lower_hex)
}

/// The rows where a mask is true (null counts as false), in order.
fn rows_of(mask: &BooleanArray) -> Vec<usize> {
    definite(mask).values().set_indices().collect()
}

/// The mask with nulls as false.
fn definite(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 {
        BooleanArray::new(mask.values().clone(), None)
    } else {
        arrow::compute::prep_null_mask_filter(mask)
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
    unique: HashMap<String, HashSet<u128, foldhash::fast::RandomState>>,
    seeds: (foldhash::quality::FixedState, foldhash::quality::FixedState),
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
            seeds: (
                foldhash::quality::FixedState::with_seed(rand_seed(1)),
                foldhash::quality::FixedState::with_seed(rand_seed(2)),
            ),
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
        let checked = self.check_batch(cols);
        if let Err(e) = checked {
            // The arrays have the schema's types, so a kernel cannot fail on them; if one
            // does, the file is refused rather than let through.
            tracing::warn!(error = %e, "a validation kernel failed");
            self.violation(0, None, "parquet", || {
                "the file could not be checked: its values could not be read".into()
            });
        }
        if let Some(text) = self.period_col.and_then(|p| Text::of(&cols[p]).ok()) {
            let periods = &mut self.periods;
            text.present(|v| {
                if !periods.contains(v)
                    && periods.len() < 10_000
                    && (Quarter::parse(v).is_some()
                        || concordat_core::FinancialYear::parse(v).is_some())
                {
                    periods.insert(v.to_owned());
                }
            });
        }
        self.rows += n as u64;
    }

    fn check_batch(&mut self, cols: &[ArrayRef]) -> Result<(), ArrowError> {
        for (i, col) in self.schema.columns.iter().enumerate() {
            self.check_column(i, col, &cols[i])?;
        }
        for r in 0..self.rules.len() {
            self.check_rule(r, cols)?;
        }
        if let Some(f) = self.force_col {
            let reference = self.reference;
            let scope = self.scope;
            let outside =
                Text::of(&cols[f])?.mask(|v| reference.force(v).is_some() && !scope.allows(v));
            let agreements = self.scope_agreements.clone();
            let column = self.schema.columns[f].name.clone();
            for row in rows_of(&outside) {
                self.violation(row, Some(&column), "row_scope", || {
                    format!("this row's force area is outside the rows your agreements ({agreements}) let you upload")
                });
            }
        }
        Ok(())
    }

    fn report(
        &mut self,
        mask: &BooleanArray,
        column: &str,
        rule: &str,
        message: &dyn Fn() -> String,
    ) {
        for row in rows_of(mask) {
            self.violation(row, Some(column), rule, message);
        }
    }

    fn check_column(
        &mut self,
        i: usize,
        col: &concordat_core::ColumnSchema,
        a: &ArrayRef,
    ) -> Result<(), ArrowError> {
        let name = col.name.as_str();
        if !col.nullable && a.null_count() > 0 {
            let nulls = arrow::compute::is_null(a)?;
            self.report(&nulls, name, "not_null", &|| {
                format!("`{name}` may not be null")
            });
        }
        match col.data_type {
            ColumnType::Utf8 => {
                let s = Text::of(a)?;
                if let Some(set) = &self.enums[i] {
                    let outside = s.mask(|v| !set.contains(v));
                    let allowed = col.allowed.as_deref().unwrap_or_default().join(", ");
                    self.report(&outside, name, "enum", &|| {
                        format!("`{name}` must be one of: {allowed}")
                    });
                }
                let format: Option<(TextTest, String)> = match col.format {
                    Some(Format::Quarter) => Some((
                        |v| Quarter::parse(v).is_some(),
                        format!("`{name}` must be a quarter written YYYYQn, e.g. 2024Q3"),
                    )),
                    Some(Format::FinancialYear) => Some((
                        |v| concordat_core::FinancialYear::parse(v).is_some(),
                        format!("`{name}` must be a financial year written YYYY-YY, e.g. 2024-25"),
                    )),
                    Some(Format::Hex64) => Some((
                        is_pseudonym,
                        format!(
                            "`{name}` must be a pseudonym of 64 lowercase hexadecimal characters"
                        ),
                    )),
                    None => None,
                };
                if let Some((valid, message)) = format {
                    let bad = if col.format == Some(Format::Hex64) {
                        // Pseudonyms are nearly all distinct: no memo.
                        hex64_mask(s)
                    } else {
                        s.mask(|v| !valid(v))
                    };
                    self.report(&bad, name, "format", &|| message.clone());
                }
                let reference = self.reference;
                let bad_reference = match col.reference {
                    Some(ReferenceKind::PfaCode) => Some((
                        s.mask(|v| reference.force(v).is_none()),
                        format!(
                            "`{name}` must be one of the 43 police force area codes (see police_forces)"
                        ),
                    )),
                    Some(ReferenceKind::ProbationRegionCode) => Some((
                        s.mask(|v| !reference.is_probation_region(v)),
                        format!("`{name}` must be a probation region code (N03, N07, N50 to N59)"),
                    )),
                    None => None,
                };
                if let Some((bad, message)) = bad_reference {
                    self.report(&bad, name, "reference", &|| message.clone());
                }
            }
            ColumnType::Int32 | ColumnType::Int64 | ColumnType::Float64 | ColumnType::Date32 => {
                let b = self.bounds[i];
                if b.min.is_none() && b.max.is_none() && col.data_type != ColumnType::Float64 {
                    return Ok(());
                }
                let v = floats(a)?;
                // NaN and infinities are refused wherever a number is (only a float can
                // be either).
                let values = v.values();
                let bits = if col.data_type == ColumnType::Float64 {
                    BooleanBuffer::collect_bool(v.len(), |i| !values[i].is_finite())
                } else {
                    BooleanBuffer::new_unset(v.len())
                };
                let mut bad = BooleanArray::new(bits, v.nulls().cloned());
                if let Some(m) = b.min {
                    bad = or(&bad, &cmp::lt(&v, &scalar(m))?)?;
                }
                if let Some(m) = b.max {
                    bad = or(&bad, &cmp::gt(&v, &scalar(m))?)?;
                }
                let (lo, hi) = (&col.min, &col.max);
                self.report(&bad, name, "range", &|| {
                    match (lo, hi) {
                        (Some(lo), Some(hi)) => format!("`{name}` must lie between {lo} and {hi}"),
                        (Some(lo), None) => format!("`{name}` must be at least {lo}"),
                        (None, Some(hi)) => format!("`{name}` must be at most {hi}"),
                        (None, None) => format!("`{name}` must be a finite number"),
                    }
                    .replace('"', "")
                });
            }
            ColumnType::Boolean => {}
        }
        Ok(())
    }

    fn check_rule(&mut self, r: usize, cols: &[ArrayRef]) -> Result<(), ArrowError> {
        let (rule, conds) = &self.rules[r];
        let (rule, name) = (*rule, rule.name.clone());
        let message = rule.message.clone();
        let cond = conds.first().map(|c| c.mask(cols)).transpose()?;
        let idx = |c: &str| self.schema.column_index(c).unwrap_or(0);
        // (column at fault, rows that break the rule)
        let mut bad: Vec<(String, BooleanArray)> = Vec::new();
        match &rule.kind {
            RuleKind::PositiveIff { column, .. } => {
                if let Some(cond) = &cond {
                    let positive = cmp::gt(&floats(&cols[idx(column)])?, &scalar(0.0))?;
                    bad.push((column.clone(), cmp::neq(&positive, cond)?));
                }
            }
            RuleKind::NullIff { column, .. } => {
                if let Some(cond) = &cond {
                    let null = arrow::compute::is_null(&cols[idx(column)])?;
                    bad.push((column.clone(), cmp::neq(&null, cond)?));
                }
            }
            RuleKind::Ordered { columns } => {
                // Each value must not be below the last non-null value before it; a row
                // is reported once, at the first column out of order.
                let mut prev: Option<Float64Array> = None;
                let mut reported: Option<BooleanArray> = None;
                for c in columns {
                    let v = floats(&cols[idx(c)])?;
                    if let Some(p) = &prev {
                        let mut out = cmp::lt(&v, p)?;
                        if let Some(done) = &reported {
                            out = and(&out, &not(done)?)?;
                        }
                        let out = definite(&out);
                        reported = Some(match &reported {
                            Some(done) => or(done, &out)?,
                            None => out.clone(),
                        });
                        bad.push((c.clone(), out));
                        let keep = arrow::compute::is_not_null(&v)?;
                        let next = arrow::compute::kernels::zip::zip(&keep, &v, p)?;
                        prev = Some(next.as_primitive::<Float64Type>().clone());
                    } else {
                        prev = Some(v);
                    }
                }
            }
            RuleKind::PfaInProbationRegion {
                pfa_column,
                region_column,
            } => {
                let p = Text::of(&cols[idx(pfa_column)])?;
                let g = Text::of(&cols[idx(region_column)])?;
                let mask = pair_mask(p, g, |p, g| {
                    self.pfa_region.get(p).is_some_and(|want| want != g)
                        && self.reference.is_probation_region(g)
                });
                bad.push((region_column.clone(), mask));
            }
            RuleKind::MemberOfGroup {
                column,
                group_column,
                groups,
            } => {
                let v = Text::of(&cols[idx(column)])?;
                let g = Text::of(&cols[idx(group_column)])?;
                let mask = pair_mask(v, g, |v, g| {
                    groups
                        .get(g)
                        .is_some_and(|members| !members.iter().any(|m| m == v))
                });
                bad.push((column.clone(), mask));
            }
            RuleKind::RangeWhen {
                columns, min, max, ..
            } => {
                if let Some(cond) = &cond {
                    for c in columns {
                        let v = floats(&cols[idx(c)])?;
                        let out = or(&cmp::lt(&v, &scalar(*min))?, &cmp::gt(&v, &scalar(*max))?)?;
                        bad.push((c.clone(), and(cond, &out)?));
                    }
                }
            }
            RuleKind::NotGreater { column, than } => {
                let (x, y) = (floats(&cols[idx(column)])?, floats(&cols[idx(than)])?);
                bad.push((column.clone(), cmp::gt(&x, &y)?));
            }
            RuleKind::Unique { columns } => {
                let arrays: Vec<ArrayRef> = columns.iter().map(|c| cols[idx(c)].clone()).collect();
                let converter = arrow::row::RowConverter::new(
                    arrays
                        .iter()
                        .map(|a| arrow::row::SortField::new(a.data_type().clone()))
                        .collect(),
                )?;
                let keys = converter.convert_columns(&arrays)?;
                let seen = self.unique.entry(name.clone()).or_default();
                let mask: BooleanArray = (0..keys.num_rows())
                    .map(|r| Some(!seen.insert(row_key(&self.seeds, keys.row(r).as_ref()))))
                    .collect();
                bad.push((columns.last().cloned().unwrap_or_default(), mask));
            }
        }
        for (column, mask) in bad {
            self.report(&mask, &column, &name, &|| message.clone());
        }
        Ok(())
    }
}

/// A 128-bit hash of a row's encoded values, under two seeds drawn per process (a
/// collision could only refuse a valid file, never let a duplicate through, and at 128
/// bits it does not happen).
fn row_key(
    seeds: &(foldhash::quality::FixedState, foldhash::quality::FixedState),
    bytes: &[u8],
) -> u128 {
    use std::hash::BuildHasher;
    (u128::from(seeds.0.hash_one(bytes)) << 64) | u128::from(seeds.1.hash_one(bytes))
}

/// A seed for the row-key hashers, different in every process.
fn rand_seed(salt: u64) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(salt)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{BooleanArray, DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::DataType;

    use super::*;

    const PERSON: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Reoffending rows: rows 2 (a male juvenile in Kent) and 4 (an unknown sex) are
    /// wrong in different ways, the rest are valid.
    fn rows() -> Vec<Vec<Option<&'static str>>> {
        let upper = "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef";
        vec![
            // person, quarter, pfa, region, adult/juvenile, sex
            vec![
                Some(PERSON),
                Some("2024Q1"),
                Some("E23000032"),
                Some("N57"),
                Some("adult"),
                Some("male"),
            ],
            vec![
                Some(upper),
                Some("2024Q1"),
                Some("E23000032"),
                Some("N59"),
                Some("juvenile"),
                Some("male"),
            ],
            vec![
                Some(PERSON),
                Some("2024Q2"),
                Some("E23000032"),
                Some("N57"),
                Some("adult"),
                Some("female"),
            ],
            vec![
                Some(PERSON),
                Some("2024Q5"),
                Some("E23000032"),
                Some("N57"),
                Some("adult"),
                Some("other"),
            ],
        ]
    }

    fn check(coded: bool) -> (Vec<(u64, String, String)>, BTreeSet<String>) {
        let schema = concordat_core::Schemas::builtin()
            .get("reoffending_cohort")
            .expect("schema");
        let scope = ScopeFilter::All;
        let mut checker = RowChecker::new(schema, &scope, &[]);
        let rows = rows();
        let text = |c: usize| -> ArrayRef {
            let values: Vec<Option<&str>> = rows.iter().map(|r| r[c]).collect();
            if coded && c > 0 {
                Arc::new(values.into_iter().collect::<DictionaryArray<Int32Type>>())
            } else {
                Arc::new(StringArray::from(values))
            }
        };
        let n = rows.len();
        let mut cols: Vec<ArrayRef> = (0..6).map(text).collect();
        for band in ["25-29", "theft", "court_order", "0"] {
            let values = vec![band; n];
            cols.push(if coded {
                Arc::new(values.into_iter().collect::<DictionaryArray<Int32Type>>())
            } else {
                Arc::new(StringArray::from(values))
            });
        }
        cols.push(Arc::new(BooleanArray::from(vec![false; n])));
        cols.push(Arc::new(Int32Array::from(vec![0; n])));
        cols.push(arrow::array::new_null_array(&DataType::Int32, n));
        checker.check(&cols);
        let mut found: Vec<(u64, String, String)> = checker
            .violations
            .violations
            .iter()
            .map(|v| {
                (
                    v.row.unwrap_or(0),
                    v.column.clone().unwrap_or_default(),
                    v.rule.clone(),
                )
            })
            .collect();
        found.sort();
        (found, checker.periods)
    }

    #[test]
    fn coded_and_plain_text_break_the_same_rules_at_the_same_rows() {
        let (plain, plain_periods) = check(false);
        let (coded, coded_periods) = check(true);
        let want = vec![
            (2, "person_id".to_owned(), "format".to_owned()),
            (
                2,
                "probation_region_code".to_owned(),
                "pfa_in_probation_region".to_owned(),
            ),
            (4, "cohort_quarter".to_owned(), "format".to_owned()),
            (4, "sex".to_owned(), "enum".to_owned()),
        ];
        assert_eq!(plain, want);
        assert_eq!(coded, want);
        let periods: BTreeSet<String> = ["2024Q1", "2024Q2"].map(str::to_owned).into();
        assert_eq!(plain_periods, periods);
        assert_eq!(coded_periods, periods);
    }

    #[test]
    fn a_pseudonym_is_tested_whole_and_row_by_row_alike() {
        let good = StringArray::from(vec![Some(PERSON), None, Some(PERSON)]);
        let mask = hex64_mask(Text::Plain(&good));
        assert_eq!(mask.true_count(), 0);
        assert_eq!(mask.null_count(), 1);
        let short = &PERSON[..63];
        let bad = StringArray::from(vec![Some(PERSON), Some(short), Some("g")]);
        let mask = hex64_mask(Text::Plain(&bad));
        assert_eq!(rows_of(&mask), vec![1, 2]);
        // Every length right but one character wrong.
        let wrong = PERSON.replace('f', "F");
        let bad = StringArray::from(vec![PERSON, wrong.as_str()]);
        assert_eq!(rows_of(&hex64_mask(Text::Plain(&bad))), vec![1]);
    }

    #[test]
    fn one_byte_not_lowercase_hexadecimal_is_found_wherever_it_is() {
        let good: Vec<u8> = b"0123456789abcdef"
            .iter()
            .copied()
            .cycle()
            .take(200)
            .collect();
        assert!(all_lower_hex(&good));
        assert!(all_lower_hex(&[]));
        for at in 0..good.len() {
            for wrong in [b'/', b':', b'`', b'g', b'A', b'F', b' ', 0, 0xff] {
                let mut bytes = good.clone();
                bytes[at] = wrong;
                assert!(!all_lower_hex(&bytes), "byte {wrong} at {at}");
            }
        }
    }
}
