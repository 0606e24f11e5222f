//! Violations of a dataset's rules, as reported to the uploader.

use serde::{Deserialize, Serialize};

/// How many violations a report keeps; the total is always counted.
pub const KEPT: usize = 100;

/// One broken rule. Messages describe the rule, never the offending value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Violation {
    /// 1-based data row in the file; `None` for the file as a whole.
    pub row: Option<u64>,
    /// The column, when one is at fault.
    pub column: Option<String>,
    /// Name of the rule: `enum`, `range`, `not_null`, a schema rule's name...
    pub rule: String,
    /// What the rule requires.
    pub message: String,
}

/// The first violations of a file and their total count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Violations {
    /// The first [`KEPT`] violations, in file order.
    pub violations: Vec<Violation>,
    /// How many there are in all.
    #[serde(rename = "violation_count")]
    pub count: u64,
}

impl Violations {
    /// A report of one violation.
    pub fn single(v: Violation) -> Violations {
        Violations {
            violations: vec![v],
            count: 1,
        }
    }

    /// Records a violation, keeping only the first [`KEPT`].
    pub fn push(&mut self, v: Violation) {
        self.count += 1;
        if self.violations.len() < KEPT {
            self.violations.push(v);
        }
    }

    /// Whether more need to be built (the kept list is not full).
    pub fn wants_detail(&self) -> bool {
        self.violations.len() < KEPT
    }

    /// Sorts the kept violations by row (file-level first), as rules are checked column by column.
    pub fn sort(&mut self) {
        self.violations.sort_by_key(|v| v.row.unwrap_or(0));
    }
}
