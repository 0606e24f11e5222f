//! Policy-enforced SQL against synthetic data in a real store, case by case.

mod cases_disclosure;
mod cases_refusals;
mod cases_release;
mod cases_scope;
mod planted;
mod support;
