//! What a query may be: one read statement whose plan holds only relational operators
//! over the caller's tables, and whose physical plan has no unbounded joins.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;

use crate::error::QueryError;

/// Refuses anything but a single `SELECT`-style query. Returns the reason.
pub(crate) fn check_statement(stmt: &DfStatement) -> Result<(), String> {
    match stmt {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) => Ok(()),
            Statement::Explain { .. } | Statement::ExplainTable { .. } => {
                Err("EXPLAIN and DESCRIBE are not available".into())
            }
            other => Err(format!(
                "only read queries are allowed; this is a {} statement",
                statement_kind(other)
            )),
        },
        DfStatement::Explain(_) => Err("EXPLAIN and DESCRIBE are not available".into()),
        DfStatement::CreateExternalTable(_) => {
            Err("only read queries are allowed; CREATE EXTERNAL TABLE is refused".into())
        }
        DfStatement::CopyTo(_) => Err("only read queries are allowed; COPY is refused".into()),
        _ => Err("only read queries are allowed".into()),
    }
}

/// For text that does not parse: a statement whose first word says it is not a read is
/// refused as such (`COPY t TO STDOUT` is not DataFusion's COPY syntax, but is still a
/// COPY), so the refusal does not depend on the details of its syntax.
pub(crate) fn refuse_by_keyword(sql: &str) -> Option<QueryError> {
    let first = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?
        .to_ascii_uppercase();
    let message = match first.as_str() {
        "COPY" => "only read queries are allowed; COPY is refused".to_owned(),
        "CREATE" | "DROP" | "ALTER" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "TRUNCATE"
        | "GRANT" | "REVOKE" | "SET" | "RESET" | "VACUUM" | "ANALYZE" | "CALL" | "DO" | "LOAD"
        | "ATTACH" | "INSTALL" | "PREPARE" | "EXECUTE" => {
            format!("only read queries are allowed; this is a {first} statement")
        }
        _ => return None,
    };
    Some(QueryError::NotAllowed(message))
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.first().map(|w| w.to_uppercase()) {
        Some(w) if w == "CREATE" || w == "DROP" || w == "ALTER" => format!(
            "{} {}",
            w,
            words.get(1).map(|x| x.to_uppercase()).unwrap_or_default()
        ),
        Some(w) => w,
        None => "non-query".into(),
    }
}

/// Refuses plan nodes that are not plain relational reads, in the plan and its subqueries.
pub(crate) fn check_plan(plan: &LogicalPlan) -> Result<(), String> {
    let mut refused: Option<String> = None;
    let walk = plan.apply_with_subqueries(|node| {
        let ok = matches!(
            node,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Union(_)
                | LogicalPlan::TableScan(_)
                | LogicalPlan::EmptyRelation(_)
                | LogicalPlan::Subquery(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Values(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Unnest(_)
        );
        if ok {
            Ok(TreeNodeRecursion::Continue)
        } else {
            refused = Some(format!("queries may not contain {}", node_kind(node)));
            Ok(TreeNodeRecursion::Stop)
        }
    });
    if walk.is_err() {
        return Err("the query could not be checked".into());
    }
    refused.map_or(Ok(()), Err)
}

fn node_kind(node: &LogicalPlan) -> &'static str {
    match node {
        LogicalPlan::RecursiveQuery(_) => "recursive CTEs",
        LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) => "EXPLAIN",
        LogicalPlan::Dml(_) => "data changes",
        LogicalPlan::Ddl(_) => "definitions",
        LogicalPlan::Copy(_) => "COPY",
        LogicalPlan::Statement(_) => "session statements",
        LogicalPlan::DescribeTable(_) => "DESCRIBE",
        LogicalPlan::Extension(_) => "extension operators",
        _ => "this operator",
    }
}

/// Refuses joins with no equality condition: their cost grows with the product of inputs.
pub(crate) fn check_physical(plan: &dyn ExecutionPlan) -> Result<(), String> {
    // A join against one row (a scalar subquery such as a total) is cheap; any other
    // join without an equality condition is refused.
    let single_row = |p: &std::sync::Arc<dyn ExecutionPlan>| {
        datafusion::physical_plan::StatisticsContext::new()
            .compute(
                p.as_ref(),
                &datafusion::physical_plan::StatisticsArgs::new(),
            )
            .is_ok_and(
                |s| matches!(s.num_rows, datafusion::common::stats::Precision::Exact(n) if n <= 1),
            )
    };
    if matches!(plan.name(), "NestedLoopJoinExec" | "CrossJoinExec")
        && !plan.children().into_iter().any(single_row)
    {
        return Err("joins need an equality condition between the tables (cross joins and joins on inequalities alone are refused)".into());
    }
    for child in plan.children() {
        check_physical(child.as_ref())?;
    }
    Ok(())
}
