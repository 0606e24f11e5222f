//! Finding the one aggregate over controlled rows that is released, and keeping the
//! marker column flowing from it to the answer.

use std::collections::HashMap;

use datafusion::common::Column;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{Expr, LogicalPlan, Projection};

use super::{Controlled, MARKER};

/// Whether a plan reads a controlled table anywhere (subqueries included).
pub(super) fn scans_controlled(
    plan: &LogicalPlan,
    controlled: &HashMap<String, Controlled>,
) -> bool {
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
pub(super) fn releases(
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
pub(super) fn marker_path(plan: &LogicalPlan, release: &LogicalPlan) -> bool {
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

pub(super) fn with_marker(p: Projection) -> datafusion::common::Result<LogicalPlan> {
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
