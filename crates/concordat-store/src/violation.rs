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

/// How many rows a summary line keeps.
pub const SUMMARY_ROWS: usize = 5;

/// All violations of one rule in one column: how many, and the first rows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleSummary {
    /// The column (`None`: the file as a whole).
    pub column: Option<String>,
    /// The rule.
    pub rule: String,
    /// Violations of it.
    pub count: u64,
    /// The first rows, in the order they were found.
    pub rows: Vec<u64>,
}

/// The first violations of a file, their total count, and a summary by column and rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Violations {
    /// The first [`KEPT`] violations, in file order.
    pub violations: Vec<Violation>,
    /// How many there are in all.
    #[serde(rename = "violation_count")]
    pub count: u64,
    /// Every violation counted by (column, rule), in the order first met.
    #[serde(default)]
    pub summary: Vec<RuleSummary>,
}

impl Violations {
    /// A report of one violation.
    pub fn single(v: Violation) -> Violations {
        let mut out = Violations::default();
        out.push(v);
        out
    }

    /// A report of one violation of the file as a whole (no row, no column).
    pub fn of_file(rule: &str, message: impl Into<String>) -> Violations {
        Violations::single(Violation {
            row: None,
            column: None,
            rule: rule.into(),
            message: message.into(),
        })
    }

    fn tally(&mut self, row: Option<u64>, column: Option<&str>, rule: &str) {
        self.count += 1;
        let at = self
            .summary
            .iter()
            .position(|s| s.rule == rule && s.column.as_deref() == column);
        let line = match at {
            Some(i) => &mut self.summary[i],
            None => {
                self.summary.push(RuleSummary {
                    column: column.map(str::to_owned),
                    rule: rule.to_owned(),
                    count: 0,
                    rows: Vec::new(),
                });
                let last = self.summary.len() - 1;
                &mut self.summary[last]
            }
        };
        line.count += 1;
        if let Some(r) = row
            && line.rows.len() < SUMMARY_ROWS
        {
            line.rows.push(r);
        }
    }

    /// Records a violation, keeping only the first [`KEPT`] in full.
    pub fn push(&mut self, v: Violation) {
        self.tally(v.row, v.column.as_deref(), &v.rule);
        if self.violations.len() < KEPT {
            self.violations.push(v);
        }
    }

    /// Counts a violation without its message (once [`KEPT`] are kept in full).
    pub fn count_only(&mut self, row: Option<u64>, column: Option<&str>, rule: &str) {
        self.tally(row, column, rule);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_every_violation_by_column_and_rule() {
        let mut v = Violations::default();
        for row in 1..=250u64 {
            let rule = if row % 2 == 0 { "enum" } else { "range" };
            if v.wants_detail() {
                v.push(Violation {
                    row: Some(row),
                    column: Some("sex".into()),
                    rule: rule.into(),
                    message: "m".into(),
                });
            } else {
                v.count_only(Some(row), Some("sex"), rule);
            }
        }
        assert_eq!(v.count, 250);
        assert_eq!(v.violations.len(), KEPT);
        assert_eq!(v.summary.len(), 2);
        assert_eq!(
            (v.summary[0].rule.as_str(), v.summary[0].count),
            ("range", 125)
        );
        assert_eq!(v.summary[0].rows, vec![1, 3, 5, 7, 9]);
        assert_eq!(
            (v.summary[1].rule.as_str(), v.summary[1].count),
            ("enum", 125)
        );
    }
}
