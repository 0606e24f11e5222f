//! Expressions over record-level rows that cannot fail.
//!
//! Under aggregate-only access, an error raised while evaluating a row is itself an
//! answer: `CASE WHEN <a handful of conditions> THEN 1/0 END` fails exactly when a
//! matching person exists. So every expression evaluated below the released aggregate is
//! rewritten to be total (defined for every value) or refused: casts become `TRY_CAST`
//! (null when a value does not convert), arithmetic runs in floating point, divides by
//! `NULLIF(divisor, 0)` and comes back to the type SQL gives it (`TRY_CAST`: a result out
//! of range is null, never an error and never a wrapped value; integer division stays
//! integer division, truncated), and only functions that cannot fail are allowed.

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{Cast, TryCast};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator, lit};

/// Functions that are defined for every input (given literal options where they take
/// them).
const TOTAL_FUNCTIONS: &[&str] = &[
    "coalesce",
    "nullif",
    "lower",
    "upper",
    "btrim",
    "ltrim",
    "rtrim",
    "concat",
    "character_length",
    "char_length",
    "length",
    "starts_with",
    "ends_with",
    "greatest",
    "least",
];

/// Functions that take numbers and are total in floating point.
const FLOAT_FUNCTIONS: &[&str] = &["abs", "round", "floor", "ceil", "trunc", "signum"];

/// Date functions whose first argument must be a literal unit from this list.
const DATE_FUNCTIONS: &[&str] = &["date_part", "date_trunc"];
const DATE_UNITS: &[&str] = &[
    "year", "quarter", "month", "week", "day", "dow", "doy", "isodow",
];

fn float(e: Expr) -> Expr {
    Expr::TryCast(TryCast::new(Box::new(e), DataType::Float64))
}

/// A floating-point result brought back to the type SQL gives the expression.
fn back_to(e: Expr, t: &DataType) -> Expr {
    if t.is_floating() || t.is_null() {
        e
    } else {
        Expr::TryCast(TryCast::new(Box::new(e), t.clone()))
    }
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
            | DataType::Interval(_)
            | DataType::Duration(_)
            | DataType::Time32(_)
            | DataType::Time64(_)
    )
}

/// Rewrites an expression over rows of `schema` so that it cannot fail, or says why it
/// cannot be allowed. Aggregate and window function calls are left to the caller, but
/// their arguments are rewritten.
pub(crate) fn total(expr: Expr, schema: &DFSchema) -> Result<Expr, String> {
    let rewritten = expr.transform_up(|e| {
        let out = match e {
            Expr::Cast(Cast { expr, field }) => Expr::TryCast(TryCast::new_from_field(expr, field)),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                match arithmetic(*left, op, *right, schema) {
                    Ok(e) => e,
                    Err(reason) => {
                        return Err(datafusion::common::DataFusionError::Plan(reason));
                    }
                }
            }
            Expr::Negative(inner) => {
                let t = inner.get_type(schema)?;
                if t.is_floating() {
                    Expr::Negative(inner)
                } else if t.is_numeric() {
                    back_to(Expr::Negative(Box::new(float(*inner))), &t)
                } else {
                    return plan_refusal("negation of a non-number");
                }
            }
            Expr::ScalarFunction(f) => {
                let name = f.name().to_owned();
                if TOTAL_FUNCTIONS.contains(&name.as_str()) {
                    Expr::ScalarFunction(f)
                } else if FLOAT_FUNCTIONS.contains(&name.as_str()) {
                    let t = Expr::ScalarFunction(f.clone()).get_type(schema)?;
                    let mut f = f;
                    if let Some(first) = f.args.first_mut() {
                        *first = float(first.clone());
                    }
                    for other in f.args.iter().skip(1) {
                        if !matches!(other, Expr::Literal(..)) {
                            return plan_refusal(&format!("{name}() with a computed precision"));
                        }
                    }
                    back_to(Expr::ScalarFunction(f), &t)
                } else if DATE_FUNCTIONS.contains(&name.as_str()) {
                    let unit_ok = matches!(
                        f.args.first(),
                        Some(Expr::Literal(ScalarValue::Utf8(Some(u)), _))
                            | Some(Expr::Literal(ScalarValue::Utf8View(Some(u)), _))
                            | Some(Expr::Literal(ScalarValue::LargeUtf8(Some(u)), _))
                            if DATE_UNITS.contains(&u.to_ascii_lowercase().as_str())
                    );
                    if !unit_ok {
                        return plan_refusal(&format!(
                            "{name}() with a unit other than {}",
                            DATE_UNITS.join(", ")
                        ));
                    }
                    Expr::ScalarFunction(f)
                } else {
                    return plan_refusal(&format!("the function {name}()"));
                }
            }
            e @ (Expr::Alias(_)
            | Expr::Column(_)
            | Expr::Literal(..)
            | Expr::Like(_)
            | Expr::Not(_)
            | Expr::IsNotNull(_)
            | Expr::IsNull(_)
            | Expr::IsTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNotFalse(_)
            | Expr::IsNotUnknown(_)
            | Expr::Between(_)
            | Expr::Case(_)
            | Expr::TryCast(_)
            | Expr::InList(_)
            | Expr::AggregateFunction(_)
            | Expr::WindowFunction(_)) => e,
            Expr::SimilarTo(_) => return plan_refusal("SIMILAR TO (regular expressions)"),
            Expr::ScalarSubquery(_)
            | Expr::InSubquery(_)
            | Expr::Exists(_)
            | Expr::SetComparison(_)
            | Expr::OuterReferenceColumn(..) => {
                return plan_refusal("subqueries (write them as joins)");
            }
            _ => return plan_refusal("this kind of expression"),
        };
        Ok(Transformed::yes(out))
    });
    rewritten.map(|t| t.data).map_err(|e| match e {
        datafusion::common::DataFusionError::Plan(m) => m,
        other => other.strip_backtrace(),
    })
}

fn plan_refusal<T>(what: &str) -> datafusion::common::Result<T> {
    Err(datafusion::common::DataFusionError::Plan(format!(
        "{what} cannot be used on record-level data released as aggregates only"
    )))
}

fn arithmetic(left: Expr, op: Operator, right: Expr, schema: &DFSchema) -> Result<Expr, String> {
    use Operator::*;
    let binary = |l: Expr, o: Operator, r: Expr| {
        Expr::BinaryExpr(BinaryExpr::new(Box::new(l), o, Box::new(r)))
    };
    match op {
        Eq | NotEq | Lt | LtEq | Gt | GtEq | And | Or | IsDistinctFrom | IsNotDistinctFrom
        | LikeMatch | ILikeMatch | NotLikeMatch | NotILikeMatch | StringConcat => {
            Ok(binary(left, op, right))
        }
        Plus | Minus | Multiply | Divide | Modulo => {
            let lt = left.get_type(schema).map_err(|e| e.strip_backtrace())?;
            let rt = right.get_type(schema).map_err(|e| e.strip_backtrace())?;
            if is_temporal(&lt) || is_temporal(&rt) {
                // Days between two dates cannot overflow; date-and-interval arithmetic can.
                let dates = |t: &DataType| matches!(t, DataType::Date32 | DataType::Date64);
                return if op == Minus && dates(&lt) && dates(&rt) {
                    Ok(binary(left, op, right))
                } else {
                    Err(format!(
                        "the operator {op} on dates (other than the difference of two dates) cannot be used on record-level data released as aggregates only"
                    ))
                };
            }
            if !(lt.is_numeric() || lt.is_null()) || !(rt.is_numeric() || rt.is_null()) {
                return Err(format!(
                    "the operator {op} on non-numbers cannot be used on record-level data released as aggregates only"
                ));
            }
            let t = binary(left.clone(), op, right.clone())
                .get_type(schema)
                .map_err(|e| e.strip_backtrace())?;
            let (l, r) = (float(left), float(right));
            let r = match op {
                Divide | Modulo => datafusion::functions::expr_fn::nullif(r, lit(0.0_f64)),
                _ => r,
            };
            let computed = binary(l, op, r);
            // Integer division truncates towards zero, as SQL says.
            let computed = if op == Divide && t.is_integer() {
                datafusion::functions::expr_fn::trunc(vec![computed])
            } else {
                computed
            };
            Ok(back_to(computed, &t))
        }
        other => Err(format!(
            "the operator {other} cannot be used on record-level data released as aggregates only"
        )),
    }
}
