//! Statistical disclosure control for aggregate-only access.
//!
//! A query over a dataset the caller may see as aggregates only is answered in two steps.
//!
//! 1. **Count the persons.** The query's plan must contain exactly one aggregate over the
//!    controlled rows (the *release*). Everything beneath it is rewritten: each
//!    controlled table carries its pseudonym up to the aggregate under a name of its own,
//!    every expression is made total (see [`safe`]) and checked not to touch a pseudonym
//!    except as an equality join key, and the aggregate gains, for its group and for each
//!    of its cells, the distinct persons behind it ([`persons`]). That aggregate runs.
//! 2. **Release.** Cells with fewer than `min_count` persons are suppressed; so is any
//!    cell whose persons differ from a cell already released to the same partner, or in
//!    the same answer, by fewer than `min_count` ([`ledger`]); in a table with totals
//!    (ROLLUP, CUBE, GROUPING SETS) further cells are suppressed until no suppressed cell
//!    is alone in its total; counts and integer sums are rounded to `round_to`. The
//!    released cells take the aggregate's place in the plan, and the rest of the query
//!    (HAVING, ratios, ORDER BY, joins to reference data) runs over them only.
//!
//! Anything else that touches controlled rows is refused with `aggregate_only`.

pub mod ledger;
pub mod persons;
pub mod safe;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, GroupingSet, JoinType, LogicalPlan, LogicalPlanBuilder, Projection,
    SubqueryAlias, TableScan, col, lit,
};
use futures::StreamExt;
use serde::Serialize;

use self::ledger::PartnerLedger;
use self::persons::{Persons, PersonsUdaf};
use crate::QueryError;

/// Name of the column that marks a row with a suppressed value.
pub const MARKER: &str = "_suppressed";
const PERSON_PREFIX: &str = "__concordat_person_";
const SKETCH_PREFIX: &str = "__concordat_persons_";

/// The disclosure terms of one aggregate-only dataset, for one caller.
#[derive(Debug, Clone)]
pub struct Controlled {
    /// Dataset.
    pub dataset: String,
    /// Agreements that grant the aggregate access.
    pub agreements: Vec<String>,
    /// Smallest number of distinct persons behind a released cell.
    pub min_count: u64,
    /// Counts are rounded to a multiple of this.
    pub round_to: u64,
    /// Column holding the person pseudonym.
    pub person_column: String,
    /// All pseudonym columns (the person and any case identifiers).
    pub pseudonyms: Vec<String>,
    /// Columns with a fixed list of values, and the values.
    pub domains: HashMap<String, Vec<String>>,
}

/// Cells suppressed, by reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Suppressed {
    /// Fewer than `min_count` persons behind the cell.
    pub threshold: usize,
    /// Within `min_count` persons of a cell released earlier to the same partner or in
    /// the same answer.
    pub differencing: usize,
    /// Suppressed so that a suppressed cell cannot be recovered from a total.
    pub secondary: usize,
}

/// What disclosure control did to an answer.
#[derive(Debug, Clone, Serialize)]
pub struct Disclosure {
    /// Always `aggregate`.
    pub access: &'static str,
    /// Aggregate-only datasets read.
    pub datasets: Vec<String>,
    /// Agreements whose rules were applied.
    pub agreements: Vec<String>,
    /// Persons a released cell needs.
    pub min_count: u64,
    /// Counts and integer sums are rounded to a multiple of this.
    pub round_to: u64,
    /// Groups the aggregate produced.
    pub groups: usize,
    /// Cells (groups × aggregate columns).
    pub cells: usize,
    /// Cells withheld (shown as null, or in a withheld group).
    pub suppressed_cells: usize,
    /// Groups with fewer than `min_count` persons left out of the answer altogether,
    /// because even their key would tell that someone with those values exists. (When
    /// every grouping column has a fixed list of values, every combination is shown
    /// instead, empty or small ones withheld alike, and none is left out.)
    pub withheld_groups: usize,
    /// Withheld cells by reason.
    pub suppressed: Suppressed,
    /// Cells rounded.
    pub rounded_cells: usize,
    /// Aggregate columns that were rounded.
    pub rounded_columns: Vec<String>,
    /// The column marking rows with a withheld value, when the answer has one.
    pub marker_column: Option<String>,
    /// The rules, in words.
    pub rules: Vec<String>,
}

fn refuse(controlled: &HashMap<String, Controlled>, why: impl std::fmt::Display) -> QueryError {
    let mut names: Vec<_> = controlled.values().collect();
    names.sort_by(|a, b| a.dataset.cmp(&b.dataset));
    let terms: Vec<String> = names
        .iter()
        .map(|c| format!("{} (agreement `{}`)", c.dataset, c.agreements.join("`, `")))
        .collect();
    QueryError::Refused {
        code: "aggregate_only",
        message: format!(
            "{} may be answered with aggregates only, under disclosure control: {why}",
            terms.join(" and ")
        ),
    }
}

fn scans_controlled(plan: &LogicalPlan, controlled: &HashMap<String, Controlled>) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(s) = p
            && controlled.contains_key(s.table_name.table())
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The lowest aggregates over controlled rows.
fn releases(
    plan: &LogicalPlan,
    controlled: &HashMap<String, Controlled>,
    out: &mut Vec<LogicalPlan>,
) {
    if let LogicalPlan::Aggregate(a) = plan
        && scans_controlled(&a.input, controlled)
    {
        let before = out.len();
        releases(&a.input, controlled, out);
        if out.len() == before {
            out.push(plan.clone());
        }
        return;
    }
    for input in plan.inputs() {
        releases(input, controlled, out);
    }
}

/// Whether the path from the root to the release holds only nodes that keep a marker
/// column flowing (so each output row can say whether it holds a withheld value).
fn marker_path(plan: &LogicalPlan, release: &LogicalPlan) -> bool {
    if plan == release {
        return true;
    }
    match plan {
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Window(_)
        | LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(_)) => plan
            .inputs()
            .first()
            .is_some_and(|i| marker_path(i, release)),
        _ => false,
    }
}

/// Applies disclosure control to an optimised plan that reads controlled tables: runs the
/// release aggregate with person counts and returns the plan with the released cells in
/// its place, and what was done.
pub async fn release(
    plan: LogicalPlan,
    state: &SessionState,
    controlled: &HashMap<String, Controlled>,
    ledger: Arc<Mutex<PartnerLedger>>,
    max_groups: usize,
) -> Result<(LogicalPlan, Disclosure), QueryError> {
    let mut found = Vec::new();
    releases(&plan, controlled, &mut found);
    let release_node = match found.len() {
        0 => {
            return Err(refuse(
                controlled,
                "this query would return record-level rows; aggregate them with COUNT, SUM or AVG and GROUP BY",
            ));
        }
        1 => found.remove(0),
        _ => {
            return Err(refuse(
                controlled,
                "a query may aggregate controlled rows once; for totals beside a breakdown use GROUP BY ROLLUP, CUBE or GROUPING SETS",
            ));
        }
    };
    let LogicalPlan::Aggregate(agg) = &release_node else {
        return Err(QueryError::Internal("release is not an aggregate".into()));
    };
    let marker = marker_path(&plan, &release_node);
    let (replacement, disclosure) =
        run_release(agg, state, controlled, ledger, max_groups, marker).await?;
    let mut replaced = false;
    let swapped = plan
        .transform_down(|node| {
            if !replaced && node == release_node {
                replaced = true;
                return Ok(Transformed::new(
                    replacement.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ));
            }
            Ok(Transformed::no(node))
        })
        .map_err(|e| QueryError::Internal(e.to_string()))?
        .data;
    let rebuilt = swapped
        .transform_up(|node| {
            let node = match node {
                LogicalPlan::Projection(p) if marker => with_marker(p)?,
                other => other,
            };
            Ok(Transformed::yes(node.recompute_schema()?))
        })
        .map_err(|e| QueryError::Internal(e.to_string()))?
        .data;
    if !replaced || scans_controlled(&rebuilt, controlled) {
        return Err(refuse(
            controlled,
            "controlled rows may be read only inside the one aggregate that is released",
        ));
    }
    Ok((rebuilt, disclosure))
}

fn with_marker(p: Projection) -> datafusion::common::Result<LogicalPlan> {
    let has_input = p.input.schema().has_column_with_unqualified_name(MARKER);
    let has_output = p.schema.has_column_with_unqualified_name(MARKER);
    if !has_input || has_output {
        return Ok(LogicalPlan::Projection(p));
    }
    let mut expr = p.expr;
    let qualified = p
        .input
        .schema()
        .iter()
        .find(|(_, f)| f.name() == MARKER)
        .map(|(q, f)| Column::new(q.cloned(), f.name()));
    if let Some(c) = qualified {
        expr.push(Expr::Column(c));
    }
    Ok(LogicalPlan::Projection(Projection::try_new(expr, p.input)?))
}

/// What one aggregate cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellKind {
    Count,
    Sum,
    Avg,
}

struct Cell {
    name: String,
    kind: CellKind,
    /// Index into the person sketches computed.
    persons: usize,
}

async fn run_release(
    agg: &Aggregate,
    state: &SessionState,
    controlled: &HashMap<String, Controlled>,
    ledger: Arc<Mutex<PartnerLedger>>,
    max_groups: usize,
    marker: bool,
) -> Result<(LogicalPlan, Disclosure), QueryError> {
    let refused = |why: String| refuse(controlled, why);
    let mut rewriter = Rewriter {
        controlled,
        next: 0,
    };
    let q = rewriter.walk(&agg.input).map_err(refused)?;
    if q.persons.is_empty() {
        return Err(refuse(
            controlled,
            "the aggregate must count the rows of the controlled dataset itself",
        ));
    }
    let input_schema = q.plan.schema().clone();
    let checked = |e: Expr| -> Result<Expr, QueryError> {
        check_ids(&e, &q.ids).map_err(|w| refuse(controlled, w))?;
        safe::total(e, &input_schema).map_err(|w| refuse(controlled, w))
    };
    // Group expressions.
    let mut group_expr = Vec::with_capacity(agg.group_expr.len());
    for g in &agg.group_expr {
        group_expr.push(match g {
            Expr::GroupingSet(set) => Expr::GroupingSet(match set {
                GroupingSet::Rollup(es) => {
                    GroupingSet::Rollup(es.iter().cloned().map(checked).collect::<Result<_, _>>()?)
                }
                GroupingSet::Cube(es) => {
                    GroupingSet::Cube(es.iter().cloned().map(checked).collect::<Result<_, _>>()?)
                }
                GroupingSet::GroupingSets(sets) => GroupingSet::GroupingSets(
                    sets.iter()
                        .map(|es| {
                            es.iter()
                                .cloned()
                                .map(checked)
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .collect::<Result<_, _>>()?,
                ),
            }),
            other => checked(other.clone())?,
        });
    }
    // The persons behind the group, then behind each cell.
    let person = {
        let mut cols: Vec<Expr> = q
            .persons
            .iter()
            .map(|n| Expr::Column(Column::new_unqualified(n)))
            .collect();
        if cols.len() == 1 {
            cols.remove(0)
        } else {
            datafusion::functions::expr_fn::coalesce(cols)
        }
    };
    let udaf = PersonsUdaf::udaf();
    let mut conditions: Vec<Option<Expr>> = vec![None];
    let mut cells = Vec::with_capacity(agg.aggr_expr.len());
    let mut aggr_expr = Vec::with_capacity(agg.aggr_expr.len());
    let agg_fields: Vec<String> = agg
        .schema
        .fields()
        .iter()
        .skip(agg.schema.fields().len() - agg.aggr_expr.len())
        .map(|f| f.name().clone())
        .collect();
    for (e, name) in agg.aggr_expr.iter().zip(&agg_fields) {
        let (inner, alias) = match e {
            Expr::Alias(a) => (a.expr.as_ref().clone(), Some(a.name.clone())),
            other => (other.clone(), None),
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
            return Err(refused(format!("`{name}` is not an aggregate function")));
        };
        let kind = match func.name() {
            "count" => CellKind::Count,
            "sum" => CellKind::Sum,
            "avg" | "mean" => CellKind::Avg,
            "min" | "max" => {
                return Err(refused(format!(
                    "{}() of record values is not released (it is one person's value); COUNT, SUM and AVG are",
                    func.name().to_uppercase()
                )));
            }
            other => {
                return Err(refused(format!(
                    "the aggregate {other}() is not released (order statistics and other functions can single out one person's value); COUNT, SUM and AVG are"
                )));
            }
        };
        if params.distinct {
            return Err(refused(format!(
                "{}(DISTINCT …) is not available; the gateway counts distinct persons itself and withholds small groups",
                func.name().to_uppercase()
            )));
        }
        let args = params
            .args
            .into_iter()
            .map(checked)
            .collect::<Result<Vec<_>, _>>()?;
        let filter = params.filter.map(|f| checked(*f)).transpose()?;
        // Persons behind the cell: those the filter keeps whose value counts (not null;
        // for a sum, not zero either).
        let mut parts: Vec<Expr> = filter.iter().cloned().collect();
        if let Some(arg) = args.first()
            && !matches!(arg, Expr::Literal(..))
        {
            parts.push(arg.clone().is_not_null());
            if kind == CellKind::Sum {
                parts.push(arg.clone().not_eq(lit(0)));
            }
        }
        let condition = parts.into_iter().reduce(Expr::and);
        let persons = match conditions.iter().position(|c| *c == condition) {
            Some(i) => i,
            None => {
                conditions.push(condition);
                conditions.len() - 1
            }
        };
        let rebuilt = Expr::AggregateFunction(AggregateFunction {
            func,
            params: AggregateFunctionParams {
                args,
                distinct: false,
                filter: filter.map(Box::new),
                order_by: params.order_by,
                null_treatment: params.null_treatment,
            },
        });
        aggr_expr.push(match alias {
            Some(a) => rebuilt.alias(a),
            None => rebuilt,
        });
        cells.push(Cell {
            name: name.clone(),
            kind,
            persons,
        });
    }
    for (i, condition) in conditions.iter().enumerate() {
        let sketch = Expr::AggregateFunction(AggregateFunction::new_udf(
            udaf.clone(),
            vec![person.clone()],
            false,
            condition.clone().map(Box::new),
            vec![],
            None,
        ));
        aggr_expr.push(sketch.alias(format!("{SKETCH_PREFIX}{i}")));
    }
    let phase1 = Aggregate::try_new(Arc::new(q.plan), group_expr, aggr_expr)
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let group_width = agg.schema.fields().len() - agg.aggr_expr.len();
    // With ROLLUP, CUBE or GROUPING SETS the grouping id follows the group expressions.
    let grouping =
        matches!(agg.group_expr.as_slice(), [Expr::GroupingSet(_)]).then(|| group_width - 1);
    let physical = state
        .create_physical_plan(&LogicalPlan::Aggregate(phase1))
        .await
        .map_err(crate::sql_error)?;
    let schema = physical.schema();
    let mut stream = datafusion::physical_plan::execute_stream(physical, state.task_ctx())
        .map_err(|e| crate::classify(&e))?;
    let mut batches = Vec::new();
    let mut groups = 0usize;
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| crate::classify(&e))?;
        groups += b.num_rows();
        if groups > max_groups {
            return Err(refused(format!(
                "the answer would have more than {max_groups} groups; group by fewer or coarser columns"
            )));
        }
        batches.push(b);
    }
    let batch = arrow::compute::concat_batches(&schema, &batches)
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let min_count = controlled.values().map(|c| c.min_count).max().unwrap_or(10);
    let round_to = controlled.values().map(|c| c.round_to).max().unwrap_or(5);
    let padding = padding_domains(agg, controlled);
    let released = Release {
        batch: &batch,
        group_width,
        grouping,
        cells: &cells,
        sketches: conditions.len(),
        min_count,
        round_to,
        padding,
    }
    .apply(&ledger)?;
    let mut datasets: Vec<String> = controlled.keys().cloned().collect();
    datasets.sort();
    let mut agreements: Vec<String> = controlled
        .values()
        .flat_map(|c| c.agreements.iter().cloned())
        .collect();
    agreements.sort();
    agreements.dedup();
    let rounded_columns: Vec<String> = cells
        .iter()
        .filter(|c| released.rounded_kinds.contains(&c.name))
        .map(|c| c.name.clone())
        .collect();
    let disclosure = Disclosure {
        access: "aggregate",
        datasets,
        agreements,
        min_count,
        round_to,
        groups: released.marker.len(),
        cells: released.marker.len() * cells.len(),
        withheld_groups: released.withheld_groups,
        suppressed_cells: released.suppressed.threshold
            + released.suppressed.differencing
            + released.suppressed.secondary,
        suppressed: released.suppressed.clone(),
        rounded_cells: released.rounded_cells,
        rounded_columns,
        marker_column: marker.then(|| MARKER.to_owned()),
        rules: vec![
            format!("a cell needs at least {min_count} distinct persons behind it, or it is withheld"),
            format!("counts and integer sums are rounded to the nearest multiple of {round_to}"),
            format!("a cell whose persons differ by fewer than {min_count} from a cell already released to your organisation, or in this answer, is withheld"),
            "in a table with totals, cells are withheld until no withheld cell can be recovered by subtraction".into(),
            "MIN, MAX and other single-value statistics are not released; pseudonyms are join keys only".into(),
        ],
    };
    // The released cells, under the aggregate's own column names.
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (i, f) in agg.schema.fields().iter().enumerate() {
        fields.push(Field::new(format!("c{i}"), f.data_type().clone(), true));
        columns.push(released.columns[i].clone());
    }
    fields.push(Field::new(MARKER, DataType::Boolean, false));
    columns.push(Arc::new(released.marker.clone()));
    let out_schema = Arc::new(Schema::new(fields));
    let out = RecordBatch::try_new(out_schema.clone(), columns)
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let table = MemTable::try_new(out_schema, vec![vec![out]])
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let mut exprs: Vec<Expr> = agg
        .schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            Expr::Column(Column::new_unqualified(format!("c{i}")))
                .alias_qualified(q.cloned(), f.name())
        })
        .collect();
    if marker {
        exprs.push(col(MARKER));
    }
    let replacement = LogicalPlanBuilder::scan(
        "concordat_released",
        provider_as_source(Arc::new(table)),
        None,
    )
    .and_then(|b| b.project(exprs))
    .and_then(LogicalPlanBuilder::build)
    .map_err(|e| QueryError::Internal(e.to_string()))?;
    Ok((replacement, disclosure))
}

/// The values of each grouping column, when the aggregate groups plain columns that
/// each have a short fixed list of values (so every combination can be shown).
fn padding_domains(
    agg: &Aggregate,
    controlled: &HashMap<String, Controlled>,
) -> Option<Vec<Vec<String>>> {
    const MAX_COMBINATIONS: usize = 10_000;
    if agg.group_expr.is_empty() {
        return None;
    }
    let mut domains = Vec::new();
    let mut combinations = 1usize;
    for g in &agg.group_expr {
        let Expr::Column(c) = g else { return None };
        let values = controlled.values().find_map(|t| t.domains.get(&c.name))?;
        combinations = combinations.saturating_mul(values.len());
        domains.push(values.clone());
    }
    (combinations <= MAX_COMBINATIONS).then_some(domains)
}

/// Refuses any use of a pseudonym in an expression.
fn check_ids(e: &Expr, ids: &HashSet<Column>) -> Result<(), String> {
    for c in e.column_refs() {
        if ids.contains(c) {
            return Err(format!(
                "the pseudonym `{}` may only be used as an equality join key between datasets; it cannot be selected, grouped, filtered, counted, compared or computed on",
                c.name
            ));
        }
    }
    Ok(())
}

/// The rewritten input of the release, with what it carries.
struct Out {
    plan: LogicalPlan,
    /// Pseudonym columns in the output.
    ids: HashSet<Column>,
    /// Names of the carried person columns in the output.
    persons: Vec<String>,
    /// Whether the subtree reads a controlled table.
    controlled: bool,
}

struct Rewriter<'a> {
    controlled: &'a HashMap<String, Controlled>,
    next: usize,
}

fn internal(e: datafusion::common::DataFusionError) -> String {
    format!(
        "the query could not be rewritten for disclosure control ({})",
        e.strip_backtrace()
    )
}

/// The (qualified) columns of a schema at these positions.
fn columns_at(schema: &DFSchema, positions: impl IntoIterator<Item = usize>) -> HashSet<Column> {
    positions
        .into_iter()
        .map(|i| {
            let (q, f) = schema.qualified_field(i);
            Column::new(q.cloned(), f.name())
        })
        .collect()
}

fn present(schema: &DFSchema, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| schema.has_column_with_unqualified_name(n))
        .cloned()
        .collect()
}

impl Rewriter<'_> {
    fn walk(&mut self, plan: &LogicalPlan) -> Result<Out, String> {
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan),
            LogicalPlan::Projection(p) => {
                let input = self.walk(&p.input)?;
                let in_schema = input.plan.schema().clone();
                let mut exprs = Vec::with_capacity(p.expr.len() + input.persons.len());
                let mut id_positions = Vec::new();
                for (i, e) in p.expr.iter().enumerate() {
                    let bare = match e {
                        Expr::Column(c) => Some(c),
                        Expr::Alias(a) => match a.expr.as_ref() {
                            Expr::Column(c) => Some(c),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(c) = bare
                        && input.ids.contains(c)
                    {
                        id_positions.push(i);
                        exprs.push(e.clone());
                        continue;
                    }
                    check_ids(e, &input.ids)?;
                    exprs.push(safe::total(e.clone(), &in_schema)?);
                }
                for n in &input.persons {
                    if !p.schema.has_column_with_unqualified_name(n) {
                        exprs.push(Expr::Column(Column::new_unqualified(n)));
                    }
                }
                let projection =
                    Projection::try_new(exprs, Arc::new(input.plan)).map_err(internal)?;
                let ids = columns_at(&projection.schema, id_positions);
                Ok(Out {
                    plan: LogicalPlan::Projection(projection),
                    ids,
                    persons: input.persons,
                    controlled: input.controlled,
                })
            }
            LogicalPlan::Filter(f) => {
                let input = self.walk(&f.input)?;
                check_ids(&f.predicate, &input.ids)?;
                let predicate = safe::total(f.predicate.clone(), input.plan.schema())?;
                let filter = Filter::try_new(predicate, Arc::new(input.plan)).map_err(internal)?;
                Ok(Out {
                    plan: LogicalPlan::Filter(filter),
                    ..input
                })
            }
            LogicalPlan::SubqueryAlias(s) => {
                let input = self.walk(&s.input)?;
                let in_schema = input.plan.schema().clone();
                let alias = SubqueryAlias::try_new(Arc::new(input.plan), s.alias.clone())
                    .map_err(internal)?;
                let positions = input
                    .ids
                    .iter()
                    .filter_map(|c| in_schema.index_of_column(c).ok());
                let ids = columns_at(&alias.schema, positions);
                Ok(Out {
                    plan: LogicalPlan::SubqueryAlias(alias),
                    ids,
                    persons: input.persons,
                    controlled: input.controlled,
                })
            }
            LogicalPlan::Join(j) => {
                let left = self.walk(&j.left)?;
                let right = self.walk(&j.right)?;
                let mut on = Vec::with_capacity(j.on.len());
                let mut linked = false;
                for (l, r) in &j.on {
                    let l_id = matches!(l, Expr::Column(c) if left.ids.contains(c));
                    let r_id = matches!(r, Expr::Column(c) if right.ids.contains(c));
                    if l_id && r_id {
                        linked = true;
                        on.push((l.clone(), r.clone()));
                        continue;
                    }
                    check_ids(l, &left.ids)?;
                    check_ids(r, &right.ids)?;
                    on.push((
                        safe::total(l.clone(), left.plan.schema())?,
                        safe::total(r.clone(), right.plan.schema())?,
                    ));
                }
                if left.controlled && right.controlled && !linked {
                    return Err(
                        "two controlled datasets may be joined only on their pseudonyms (person_id = person_id)"
                            .into(),
                    );
                }
                let mut joined_schema = left.plan.schema().as_ref().clone();
                joined_schema.merge(right.plan.schema());
                let filter = match &j.filter {
                    Some(f) => {
                        let mut all = left.ids.clone();
                        all.extend(right.ids.iter().cloned());
                        check_ids(f, &all)?;
                        Some(safe::total(f.clone(), &joined_schema)?)
                    }
                    None => None,
                };
                let (keep_left, keep_right) = match j.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => (true, false),
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                        (false, true)
                    }
                    _ => (true, true),
                };
                let mut ids = HashSet::new();
                let mut persons = Vec::new();
                let mut controlled = false;
                if keep_left {
                    ids.extend(left.ids);
                    persons.extend(left.persons);
                    controlled |= left.controlled;
                }
                if keep_right {
                    ids.extend(right.ids);
                    persons.extend(right.persons);
                    controlled |= right.controlled;
                }
                let join = LogicalPlan::Join(datafusion::logical_expr::Join {
                    left: Arc::new(left.plan),
                    right: Arc::new(right.plan),
                    on,
                    filter,
                    join_type: j.join_type,
                    join_constraint: j.join_constraint,
                    schema: j.schema.clone(),
                    null_equality: j.null_equality,
                    null_aware: j.null_aware,
                })
                .recompute_schema()
                .map_err(internal)?;
                let persons = present(join.schema(), &persons);
                Ok(Out {
                    plan: join,
                    ids,
                    persons,
                    controlled,
                })
            }
            other if !scans_controlled(other, self.controlled) => {
                // Rows the caller may see in full (reference data, record-level grants):
                // still made total, because whether they are evaluated at all can depend on
                // the controlled rows they meet.
                let plan = other
                    .clone()
                    .transform_up(|node| {
                        let schema = node
                            .inputs()
                            .first()
                            .map(|i| i.schema().clone())
                            .unwrap_or_else(|| node.schema().clone());
                        node.map_expressions(|e| {
                            safe::total(e, &schema)
                                .map(Transformed::yes)
                                .map_err(datafusion::common::DataFusionError::Plan)
                        })?
                        .map_data(|n| n.recompute_schema())
                    })
                    .map_err(|e| match e {
                        datafusion::common::DataFusionError::Plan(m) => m,
                        e => internal(e),
                    })?
                    .data;
                Ok(Out {
                    plan,
                    ids: HashSet::new(),
                    persons: vec![],
                    controlled: false,
                })
            }
            other => Err(format!(
                "{} over controlled rows is not available below the aggregate",
                node_kind(other)
            )),
        }
    }

    fn scan(&mut self, scan: &TableScan) -> Result<Out, String> {
        let Some(terms) = self.controlled.get(scan.table_name.table()) else {
            return Ok(Out {
                plan: LogicalPlan::TableScan(scan.clone()),
                ids: HashSet::new(),
                persons: vec![],
                controlled: false,
            });
        };
        // Filters pushed into the scan only prune (they are applied again above it).
        if scan.fetch.is_some() {
            return Err("LIMIT over controlled rows is not available below the aggregate".into());
        }
        let source_schema = scan.source.schema();
        let person = source_schema
            .index_of(&terms.person_column)
            .map_err(|e| internal(e.into()))?;
        let mut projection = scan
            .projection
            .clone()
            .unwrap_or_else(|| (0..source_schema.fields().len()).collect());
        if !projection.contains(&person) {
            projection.push(person);
        }
        let rescan = datafusion::logical_expr::TableScanBuilder::new(
            scan.table_name.clone(),
            scan.source.clone(),
        )
        .with_projection(Some(projection))
        .with_filters(scan.filters.clone())
        .build()
        .map_err(internal)?;
        let name = format!("{PERSON_PREFIX}{}", self.next);
        self.next += 1;
        let mut exprs: Vec<Expr> = rescan
            .projected_schema
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        exprs.push(
            Expr::Column(Column::new(
                Some(scan.table_name.clone()),
                terms.person_column.as_str(),
            ))
            .alias(name.as_str()),
        );
        let ids = rescan
            .projected_schema
            .columns()
            .into_iter()
            .filter(|c| terms.pseudonyms.contains(&c.name))
            .collect();
        let plan = Projection::try_new(exprs, Arc::new(LogicalPlan::TableScan(rescan)))
            .map(LogicalPlan::Projection)
            .map_err(internal)?;
        Ok(Out {
            plan,
            ids,
            persons: vec![name],
            controlled: true,
        })
    }
}

fn node_kind(plan: &LogicalPlan) -> &'static str {
    match plan {
        LogicalPlan::Window(_) => "a window function",
        LogicalPlan::Aggregate(_) => "an aggregate",
        LogicalPlan::Limit(_) => "LIMIT",
        LogicalPlan::Sort(_) => "ORDER BY",
        LogicalPlan::Distinct(_) => "DISTINCT",
        LogicalPlan::Union(_) => "UNION",
        LogicalPlan::Unnest(_) => "UNNEST",
        LogicalPlan::Values(_) => "VALUES",
        _ => "this operator",
    }
}

/// The second step: suppression, differencing, secondary suppression and rounding over
/// the aggregate's output with its person sketches.
struct Release<'a> {
    batch: &'a RecordBatch,
    group_width: usize,
    /// Column of the grouping id, for ROLLUP, CUBE and GROUPING SETS.
    grouping: Option<usize>,
    cells: &'a [Cell],
    sketches: usize,
    min_count: u64,
    round_to: u64,
    /// The values of each grouping column, when every combination is to be shown.
    padding: Option<Vec<Vec<String>>>,
}

struct Released {
    columns: Vec<ArrayRef>,
    marker: BooleanArray,
    suppressed: Suppressed,
    rounded_cells: usize,
    rounded_kinds: Vec<String>,
    withheld_groups: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Threshold,
    Differencing,
    Secondary,
}

impl Release<'_> {
    fn apply(&self, ledger: &Mutex<PartnerLedger>) -> Result<Released, QueryError> {
        let rows = self.batch.num_rows();
        let n_cells = self.cells.len();
        let first_sketch = self.batch.num_columns() - self.sketches;
        // sketches[s][row]
        let mut sketches: Vec<Vec<Persons>> = Vec::with_capacity(self.sketches);
        for s in 0..self.sketches {
            let col = self.batch.column(first_sketch + s);
            let col = col.as_binary::<i32>();
            sketches.push(
                (0..rows)
                    .map(|r| {
                        if col.is_null(r) {
                            Persons::empty()
                        } else {
                            Persons::from_bytes(col.value(r)).unwrap_or_else(Persons::empty)
                        }
                    })
                    .collect(),
            );
        }
        let cell_persons = |row: usize, c: usize| &sketches[self.cells[c].persons][row];
        let mut state: Vec<Vec<Option<Reason>>> = vec![vec![None; n_cells]; rows];
        for (row, cells) in state.iter_mut().enumerate() {
            let group_small = sketches[0][row].count < self.min_count;
            for (c, s) in cells.iter_mut().enumerate() {
                if group_small || cell_persons(row, c).count < self.min_count {
                    *s = Some(Reason::Threshold);
                }
            }
        }
        let ledger = ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Differencing against earlier answers and within this one.
        let mut accepted: Vec<&Persons> = Vec::new();
        for (row, cells) in state.iter_mut().enumerate() {
            for (c, s) in cells.iter_mut().enumerate() {
                if s.is_some() {
                    continue;
                }
                let p = cell_persons(row, c);
                let near = |q: &&Persons| {
                    q.count.abs_diff(p.count) < self.min_count
                        && matches!(p.difference(q), Some(d) if d > 0 && d < self.min_count)
                };
                if accepted.iter().any(near) || ledger.conflicts(p, self.min_count) {
                    *s = Some(Reason::Differencing);
                } else if !accepted.contains(&p) {
                    accepted.push(p);
                }
            }
        }
        if let Some(gid) = self.grouping {
            self.secondary(gid, &mut state, &|row, c| cell_persons(row, c).count)?;
        }
        let mut ledger = ledger;
        let released_persons: Vec<Persons> = (0..rows)
            .flat_map(|row| (0..n_cells).map(move |c| (row, c)))
            .filter(|&(row, c)| state[row][c].is_none())
            .map(|(row, c)| cell_persons(row, c).clone())
            .collect();
        ledger
            .record(released_persons)
            .map_err(|e| QueryError::Internal(format!("release ledger: {e}")))?;
        drop(ledger);
        let mut suppressed = Suppressed::default();
        for s in state.iter().flatten().flatten() {
            match s {
                Reason::Threshold => suppressed.threshold += 1,
                Reason::Differencing => suppressed.differencing += 1,
                Reason::Secondary => suppressed.secondary += 1,
            }
        }
        let mut columns: Vec<ArrayRef> = (0..self.group_width)
            .map(|i| self.batch.column(i).clone())
            .collect();
        let mut rounded_cells = 0;
        let mut rounded_kinds = Vec::new();
        for (c, cell) in self.cells.iter().enumerate() {
            let values = self.batch.column(self.group_width + c);
            let mask: BooleanArray = (0..rows).map(|r| Some(state[r][c].is_some())).collect();
            let masked = arrow::compute::nullif(values, &mask)
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            let round = matches!(cell.kind, CellKind::Count | CellKind::Sum)
                && masked.data_type() == &DataType::Int64;
            if round {
                let ints = masked.as_primitive::<Int64Type>();
                let r = self.round_to as i64;
                let rounded: Int64Array = ints
                    .iter()
                    .map(|v| v.map(|v| round_half_up(v, r)))
                    .collect();
                rounded_cells += rounded.len() - rounded.null_count();
                rounded_kinds.push(cell.name.clone());
                columns.push(Arc::new(rounded));
            } else {
                columns.push(masked);
            }
        }
        let marker: BooleanArray = state
            .iter()
            .map(|cells| Some(cells.iter().any(Option::is_some)))
            .collect();
        let mut columns = columns;
        let mut marker: ArrayRef = Arc::new(marker);
        let mut withheld_groups = 0;
        let internal = |e: arrow::error::ArrowError| QueryError::Internal(e.to_string());
        if let Some(domains) = &self.padding {
            // Every combination is shown: empty and small groups look alike.
            let seen: HashSet<Vec<String>> = (0..rows)
                .map(|r| self.key_text(r))
                .collect::<Result<_, _>>()?;
            let mut missing: Vec<Vec<String>> = vec![vec![]];
            for values in domains {
                missing = missing
                    .into_iter()
                    .flat_map(|prefix| {
                        values.iter().map(move |v| {
                            let mut k = prefix.clone();
                            k.push(v.clone());
                            k
                        })
                    })
                    .collect();
            }
            missing.retain(|k| !seen.contains(k));
            if !missing.is_empty() {
                let n = missing.len();
                for (i, column) in columns.iter_mut().enumerate() {
                    let extra: ArrayRef = if i < self.group_width {
                        let text: arrow::array::StringArray =
                            missing.iter().map(|k| Some(k[i].as_str())).collect();
                        arrow::compute::cast(&text, column.data_type()).map_err(internal)?
                    } else {
                        arrow::array::new_null_array(column.data_type(), n)
                    };
                    *column = arrow::compute::concat(&[column.as_ref(), extra.as_ref()])
                        .map_err(internal)?;
                }
                let extra = BooleanArray::from(vec![true; n]);
                marker = arrow::compute::concat(&[marker.as_ref(), &extra]).map_err(internal)?;
                suppressed.threshold += n * n_cells;
            }
        } else if self.group_width > 0 {
            // A small group's key alone would tell that someone with those values exists.
            let keep: arrow::array::UInt32Array = (0..rows as u32)
                .filter(|&r| sketches[0][r as usize].count >= self.min_count)
                .collect();
            withheld_groups = rows - keep.len();
            if withheld_groups > 0 {
                for column in columns.iter_mut() {
                    *column =
                        arrow::compute::take(column.as_ref(), &keep, None).map_err(internal)?;
                }
                marker = arrow::compute::take(marker.as_ref(), &keep, None).map_err(internal)?;
            }
        }
        Ok(Released {
            columns,
            marker: marker.as_boolean().clone(),
            suppressed,
            rounded_cells,
            rounded_kinds,
            withheld_groups,
        })
    }

    fn key_text(&self, row: usize) -> Result<Vec<String>, QueryError> {
        (0..self.group_width)
            .map(|i| {
                let v = ScalarValue::try_from_array(self.batch.column(i), row)
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
                Ok(match v {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::Utf8View(Some(s))
                    | ScalarValue::LargeUtf8(Some(s)) => s,
                    other => other.to_string(),
                })
            })
            .collect()
    }

    /// Withholds further cells until, in every total and the cells it adds up (along one
    /// grouping column), no withheld cell is the only one: otherwise subtracting the
    /// released cells from the total gives it back.
    // Cells are indexed [row][column] and a family walks rows for one column at a time.
    #[allow(clippy::needless_range_loop)]
    fn secondary(
        &self,
        gid: usize,
        state: &mut [Vec<Option<Reason>>],
        persons: &dyn Fn(usize, usize) -> u64,
    ) -> Result<(), QueryError> {
        let rows = self.batch.num_rows();
        let n = gid; // group expressions precede the grouping id
        let ids = arrow::compute::cast(self.batch.column(gid), &DataType::UInt64)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let ids = ids.as_primitive::<arrow::datatypes::UInt64Type>();
        let absent_mask = |row: usize| -> u64 {
            let id = ids.value(row);
            id & ((1u64 << n) - 1)
        };
        let absent = |mask: u64, i: usize| mask & (1u64 << (n - 1 - i)) != 0;
        let key = |row: usize, skip: Option<usize>| -> Result<Vec<ScalarValue>, QueryError> {
            let mask = absent_mask(row);
            (0..n)
                .filter(|&i| !absent(mask, i) && Some(i) != skip)
                .map(|i| {
                    ScalarValue::try_from_array(self.batch.column(i), row)
                        .map_err(|e| QueryError::Internal(e.to_string()))
                })
                .collect()
        };
        let mut parents: HashMap<(u64, Vec<ScalarValue>), usize> = HashMap::new();
        for row in 0..rows {
            parents.insert((absent_mask(row), key(row, None)?), row);
        }
        // Families: a total and the cells that add up to it along one column.
        let mut families: HashMap<(u64, usize, Vec<ScalarValue>), Vec<usize>> = HashMap::new();
        for row in 0..rows {
            let mask = absent_mask(row);
            for i in 0..n {
                if absent(mask, i) {
                    continue;
                }
                let parent_mask = mask | (1u64 << (n - 1 - i));
                families
                    .entry((parent_mask, i, key(row, Some(i))?))
                    .or_default()
                    .push(row);
            }
        }
        let families: Vec<Vec<usize>> = families
            .into_iter()
            .filter_map(|((mask, _, values), mut members)| {
                let parent = parents.get(&(mask, values))?;
                members.push(*parent);
                Some(members)
            })
            .collect();
        let n_cells = self.cells.len();
        loop {
            let mut changed = false;
            for members in &families {
                for c in 0..n_cells {
                    let withheld = members.iter().filter(|&&r| state[r][c].is_some()).count();
                    if withheld != 1 {
                        continue;
                    }
                    if let Some(&pick) = members
                        .iter()
                        .filter(|&&r| state[r][c].is_none())
                        .min_by_key(|&&r| (persons(r, c), r))
                    {
                        state[pick][c] = Some(Reason::Secondary);
                        changed = true;
                    }
                }
            }
            if !changed {
                return Ok(());
            }
        }
    }
}

/// Rounds to the nearest multiple of `to`, halves away from zero.
fn round_half_up(v: i64, to: i64) -> i64 {
    if to <= 1 {
        return v;
    }
    let half = to / 2;
    if v >= 0 {
        (v + half) / to * to
    } else {
        -((-v + half) / to * to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_goes_to_the_nearest_multiple() {
        assert_eq!(round_half_up(0, 5), 0);
        assert_eq!(round_half_up(2, 5), 0);
        assert_eq!(round_half_up(3, 5), 5);
        assert_eq!(round_half_up(12, 5), 10);
        assert_eq!(round_half_up(13, 5), 15);
        assert_eq!(round_half_up(-13, 5), -15);
        assert_eq!(round_half_up(7, 1), 7);
    }
}
