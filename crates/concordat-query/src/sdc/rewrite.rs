//! The plan check and rewrite beneath the release aggregate.
//!
//! Beneath the one aggregate that is released only scans, filters, projections and joins
//! may touch controlled rows. Each controlled table carries its pseudonym up to the
//! aggregate under a name of its own; pseudonyms may be used only as equality join keys
//! passed through projections unchanged; every expression is made total ([`super::safe`]).
//! Anything else is refused with the reason.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::{
    Expr, Filter, JoinType, LogicalPlan, Projection, SubqueryAlias, TableScan,
};

use super::plan::scans_controlled;
use super::{Controlled, safe};

const PERSON_PREFIX: &str = "__concordat_person_";

/// Refuses any use of a pseudonym in an expression.
pub(super) fn check_ids(e: &Expr, ids: &HashSet<Column>) -> Result<(), String> {
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
pub(super) struct Out {
    pub plan: LogicalPlan,
    /// Pseudonym columns in the output.
    pub ids: HashSet<Column>,
    /// Names of the carried person columns in the output.
    pub persons: Vec<String>,
    /// Whether the subtree reads a controlled table.
    controlled: bool,
}

pub(super) struct Rewriter<'a> {
    controlled: &'a HashMap<String, Controlled>,
    next: usize,
}

impl<'a> Rewriter<'a> {
    /// A rewriter for these controlled tables.
    pub(super) fn new(controlled: &'a HashMap<String, Controlled>) -> Rewriter<'a> {
        Rewriter {
            controlled,
            next: 0,
        }
    }
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
    pub(super) fn walk(&mut self, plan: &LogicalPlan) -> Result<Out, String> {
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
