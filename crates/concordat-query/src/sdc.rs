//! Statistical disclosure control for aggregate-only access, by the cell key method.
//!
//! A query over a dataset the caller may see as aggregates only is answered in steps,
//! one module each:
//!
//! 1. **Plan check** ([`plan`]): the optimised plan must hold exactly one aggregate over
//!    the controlled rows (the *release*); anything else that touches them is refused.
//! 2. **Rewrite** ([`rewrite`], [`safe`]): beneath the release only scans, filters,
//!    projections and joins; each controlled table carries its pseudonym up to the
//!    aggregate; every expression is made total; pseudonyms are join keys only.
//! 3. **Persons and contributions** ([`contributions`]): the release is computed per
//!    (group, person), so every cell is a sum over persons of each person's contribution
//!    (rows for a count, their total for a sum; an average is a sum over a count), and
//!    per group and cell the gateway keeps the persons, their combined record keys
//!    ([`cellkey`]) and the extreme contributions.
//! 4. **Release rules** ([`rules`]): contributions are flattened to the level of the
//!    `min_count`-th person, perturbed by the published p-table for (persons, cell key),
//!    withheld when the perturbed person count is under `min_count`, and rounded.
//! 5. **The record** ([`record`]): what was done, holding nothing an empty group and a
//!    small one would show differently.
//!
//! The released cells take the aggregate's place in the plan, and the rest of the query
//! (HAVING, ratios, ORDER BY, joins to reference data) runs over them only.

pub mod cellkey;
pub mod contributions;
mod execute;
mod plan;
pub mod record;
mod rewrite;
pub mod rules;
mod safe;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::expr::{AggregateFunction, TryCast};
use datafusion::logical_expr::{
    Aggregate, Expr, GroupingSet, LogicalPlan, LogicalPlanBuilder, Projection, col,
};
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;

use self::cellkey::RecordKey;
use self::contributions::{Gather, GatherError, Gatherer, Group, Part, PartInput, PersonTable};
pub use self::execute::Prepared;
use self::execute::prepare_release;
use self::plan::{marker_path, releases, scans_controlled, with_marker};
pub use self::record::{Disclosure, Suppressed};
use self::rewrite::{Rewriter, check_ids};
use self::rules::Terms;
use crate::QueryError;

/// Name of the column that marks a row with a suppressed value.
pub const MARKER: &str = "_suppressed";
/// The person column carried to the release aggregate.
const PID: &str = "__concordat_pid";

/// The disclosure terms of one aggregate-only dataset, for one caller.
#[derive(Debug, Clone)]
pub struct Controlled {
    /// Dataset.
    pub dataset: String,
    /// Agreements that grant the aggregate access.
    pub agreements: Vec<String>,
    /// Smallest number of (perturbed) persons behind a released cell.
    pub min_count: u64,
    /// Released values are rounded to a multiple of this.
    pub round_to: u64,
    /// Column holding the person pseudonym.
    pub person_column: String,
    /// All pseudonym columns (the person and any case identifiers).
    pub pseudonyms: Vec<String>,
    /// Columns with a fixed list of values, and the values.
    pub domains: HashMap<String, Vec<String>>,
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

fn internal(e: impl std::fmt::Display) -> QueryError {
    QueryError::Internal(e.to_string())
}

/// Applies disclosure control to an optimised plan that reads controlled tables: runs the
/// release aggregate per person and returns the plan with the released cells in
/// its place, what was done, and the release, which can run again.
pub async fn release(
    plan: LogicalPlan,
    state: &SessionState,
    task: &Arc<TaskContext>,
    controlled: &HashMap<String, Controlled>,
    key: &Arc<RecordKey>,
    max_groups: usize,
) -> Result<(LogicalPlan, Disclosure, Prepared), QueryError> {
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
    let prepared = prepare_release(agg, state, controlled, key, max_groups, marker).await?;
    let per_person =
        crate::session::for_run(prepared.per_person().clone(), task).map_err(internal)?;
    let (released, disclosure) = prepared.run(per_person, task).await?;
    let replacement = prepared.replacement(released)?;
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
    Ok((rebuilt, disclosure, prepared))
}

/// What one aggregate cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// `count(...)`: the persons' rows.
    Count,
    /// `sum(...)`: the persons' totals.
    Sum,
    /// `avg(...)`: a sum over a count.
    Avg,
}

/// One output cell and the parts (contribution columns) it is released from.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Output column name.
    pub name: String,
    /// What it is.
    pub kind: CellKind,
    /// Index of the sum or count part.
    pub first: usize,
    /// For an average, index of the count part.
    pub count: Option<usize>,
}

/// The released value of each cell of one group (`None`: withheld).
pub fn release_group(group: &Group, cells: &[Cell], terms: Terms) -> Vec<Option<f64>> {
    cells
        .iter()
        .map(|c| match c.kind {
            CellKind::Count => rules::value(&group.parts[c.first], true, terms),
            CellKind::Sum => rules::value(&group.parts[c.first], false, terms),
            CellKind::Avg => rules::average(
                &group.parts[c.first],
                &group.parts[c.count.unwrap_or(c.first)],
                terms,
            ),
        })
        .collect()
}

/// Grouping sets written out in full, so that the person can join each set.
fn explicit_sets(set: &GroupingSet) -> Vec<Vec<Expr>> {
    match set {
        GroupingSet::Rollup(es) => (0..=es.len()).rev().map(|i| es[..i].to_vec()).collect(),
        GroupingSet::Cube(es) => {
            let n = es.len();
            (0..1usize << n)
                .rev()
                .map(|mask| {
                    (0..n)
                        .filter(|i| mask & (1 << (n - 1 - i)) != 0)
                        .map(|i| es[i].clone())
                        .collect()
                })
                .collect()
        }
        GroupingSet::GroupingSets(sets) => sets.clone(),
    }
}

fn check_group(
    g: &Expr,
    checked: &dyn Fn(Expr) -> Result<Expr, QueryError>,
) -> Result<Expr, QueryError> {
    let all = |es: &[Expr]| {
        es.iter()
            .cloned()
            .map(checked)
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match g {
        Expr::GroupingSet(GroupingSet::Rollup(es)) => {
            Expr::GroupingSet(GroupingSet::Rollup(all(es)?))
        }
        Expr::GroupingSet(GroupingSet::Cube(es)) => Expr::GroupingSet(GroupingSet::Cube(all(es)?)),
        Expr::GroupingSet(GroupingSet::GroupingSets(sets)) => Expr::GroupingSet(
            GroupingSet::GroupingSets(sets.iter().map(|es| all(es)).collect::<Result<_, _>>()?),
        ),
        other => checked(other.clone())?,
    })
}
