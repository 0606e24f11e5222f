//! The policy inside the plan: a table that is the stored table seen through one
//! caller's agreements. Hidden columns do not exist, masked columns are coarsened, rows
//! outside the caller's scope are filtered out, and all of this happens below a boundary
//! node that no caller predicate, projection or dynamic filter can be pushed through.
//! The caller's SQL therefore only ever evaluates over rows and values it may see: no
//! error, timing or statistics shortcut can tell it anything about the rest.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use concordat_policy::{ColumnRule, Generalise, ScopeFilter};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, cast, col, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// What one caller may see of one table.
#[derive(Debug, Clone)]
pub struct TableView {
    /// Rows the caller may see.
    pub scope: ScopeFilter,
    /// Column holding the force area code, for the scope.
    pub force_column: Option<String>,
    /// Rule per stored column (`None`: visible as stored).
    pub rules: Vec<(String, Option<ColumnRule>)>,
}

/// A stored table seen through a [`TableView`].
#[derive(Debug)]
pub struct PolicyTable {
    inner: Arc<dyn TableProvider>,
    view: TableView,
    /// Indices into the inner schema of the visible columns, in order.
    visible: Vec<usize>,
    schema: SchemaRef,
}

impl PolicyTable {
    /// Wraps a stored table.
    pub fn new(inner: Arc<dyn TableProvider>, view: TableView) -> Self {
        let inner_schema = inner.schema();
        let mut visible = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in inner_schema.fields().iter().enumerate() {
            let rule = view
                .rules
                .iter()
                .find(|(c, _)| c == f.name())
                .and_then(|(_, r)| r.clone());
            match rule {
                Some(ColumnRule::Hidden) => {}
                _ => {
                    visible.push(i);
                    fields.push(Field::new(f.name(), f.data_type().clone(), true));
                }
            }
        }
        PolicyTable {
            inner,
            view,
            visible,
            schema: Arc::new(Schema::new(fields)),
        }
    }

    fn rule(&self, name: &str) -> Option<ColumnRule> {
        self.view
            .rules
            .iter()
            .find(|(c, _)| c == name)
            .and_then(|(_, r)| r.clone())
    }

    /// Whether a caller predicate can only prune: comparisons of a visible column, as
    /// stored, with literals of its own type, combined with AND. Such a predicate cannot
    /// raise an error on any value, so evaluating it against statistics of rows outside
    /// the caller's scope tells nothing.
    fn prunable(&self, e: &Expr) -> bool {
        use datafusion::logical_expr::{BinaryExpr, Operator};
        let column = |e: &Expr| -> Option<DataType> {
            let Expr::Column(c) = e else { return None };
            let field = self.schema.field_with_name(&c.name).ok()?;
            match self.rule(&c.name) {
                None => Some(field.data_type().clone()),
                Some(_) => None,
            }
        };
        let literal_of =
            |e: &Expr, t: &DataType| matches!(e, Expr::Literal(v, _) if &v.data_type() == t);
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And => self.prunable(left) && self.prunable(right),
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => match (column(left), column(right)) {
                    (Some(t), None) => literal_of(right, &t),
                    (None, Some(t)) => literal_of(left, &t),
                    _ => false,
                },
                _ => false,
            },
            Expr::InList(list) => {
                column(&list.expr).is_some_and(|t| list.list.iter().all(|v| literal_of(v, &t)))
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => column(inner).is_some(),
            _ => false,
        }
    }

    /// The row-scope predicate, over the inner schema.
    fn scope_predicate(&self) -> Option<Expr> {
        match (&self.view.scope, &self.view.force_column) {
            (ScopeFilter::All, _) => None,
            (ScopeFilter::Forces(forces), Some(column)) => Some(
                col(column.as_str())
                    .in_list(forces.iter().map(|f| lit(f.as_str())).collect(), false),
            ),
            // A scoped grant on a table without a force column shows nothing.
            (ScopeFilter::Forces(_), None) => Some(lit(false)),
        }
    }
}

#[async_trait]
impl TableProvider for PolicyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Caller predicates are never evaluated below the policy. Those that cannot fail on
    /// any value (a visible, uncoarsened column compared with a literal) are offered to the
    /// stored table for pruning files and row groups by their statistics, and still
    /// applied in full above the boundary.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.prunable(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.visible.len()).collect(),
        };
        let inner_schema = self.inner.schema();
        // Inner columns read: the wanted ones plus the scope column.
        let mut read: Vec<usize> = wanted.iter().map(|&i| self.visible[i]).collect();
        if let Some(fc) = &self.view.force_column
            && let Ok(i) = inner_schema.index_of(fc)
            && !read.contains(&i)
        {
            read.push(i);
        }
        read.sort_unstable();
        let scope = self.scope_predicate();
        // Our own predicate may go down for pruning; it is applied again exactly below.
        // So may the caller's infallible comparisons, which prune but are applied above.
        let mut pushed: Vec<Expr> = scope.iter().cloned().collect();
        pushed.extend(filters.iter().filter(|f| self.prunable(f)).cloned());
        let scan = self.inner.scan(state, Some(&read), &pushed, None).await?;
        let scan_schema = scan.schema();
        let df_schema = DFSchema::try_from(scan_schema.as_ref().clone())?;
        let mut plan: Arc<dyn ExecutionPlan> = scan;
        if let Some(predicate) = scope {
            let physical = state.create_physical_expr(predicate, &df_schema)?;
            plan = Arc::new(FilterExec::try_new(physical, plan)?);
        }
        let mut exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = Vec::with_capacity(wanted.len());
        for &i in &wanted {
            let name = inner_schema.field(self.visible[i]).name().clone();
            let logical = match self.rule(&name) {
                Some(ColumnRule::Generalised(g)) => {
                    let unit = match g {
                        Generalise::Month => "month",
                        Generalise::Year => "year",
                    };
                    let ts = cast(
                        col(name.as_str()),
                        DataType::Timestamp(TimeUnit::Second, None),
                    );
                    cast(
                        datafusion::functions::expr_fn::date_trunc(lit(unit), ts),
                        DataType::Date32,
                    )
                }
                _ => col(name.as_str()),
            };
            exprs.push((state.create_physical_expr(logical, &df_schema)?, name));
        }
        let projected: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(exprs, plan)?);
        Ok(Arc::new(PolicyBoundary::new(projected)))
    }
}

/// A node that passes batches through and declines every pushdown, so nothing the
/// caller writes is evaluated below the policy. It reports no statistics (the trait's
/// default), so an exact row count of the stored table can never answer `COUNT(*)`.
#[derive(Debug)]
pub struct PolicyBoundary {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl PolicyBoundary {
    /// Wraps the policy's plan.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::new(input.properties().as_ref().clone());
        PolicyBoundary { input, properties }
    }
}

impl DisplayAs for PolicyBoundary {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PolicyBoundary")
    }
}

impl ExecutionPlan for PolicyBoundary {
    fn name(&self) -> &str {
        "PolicyBoundary"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.into_iter().next() {
            Some(child) => Ok(Arc::new(PolicyBoundary::new(child))),
            None => datafusion::common::internal_err!("PolicyBoundary needs one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}
