//! `policy explain`: which agreement and rule allow or refuse a partner's access to a
//! dataset for a purpose on a day, and why, in words an information governance officer
//! can check against the signed MoU.

use chrono::NaiveDate;

use crate::agreement::{Access, ColumnRule, RowScope};
use crate::decide::{Policies, ScopeFilter};
use crate::effective::ForPurpose;
use concordat_core::{DatasetName, Purpose};

/// The verdict and its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Whether reading is allowed (at any access level).
    pub allowed: bool,
    /// One line per agreement considered, then the verdict.
    pub lines: Vec<String>,
}

fn scope_text(scope: RowScope, filter: &ScopeFilter) -> String {
    match (scope, filter) {
        (RowScope::All, _) | (_, ScopeFilter::All) => "all rows".into(),
        (s, ScopeFilter::Forces(f)) => format!(
            "{s:?} rows: force areas {}",
            f.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Policies {
    /// Explains a read decision.
    pub fn explain(
        &self,
        partner_id: &str,
        dataset: &str,
        purpose: &str,
        today: NaiveDate,
    ) -> Explanation {
        let Some(partner) = self.partners().get(partner_id) else {
            return Explanation {
                allowed: false,
                lines: vec![format!(
                    "REFUSED: `{partner_id}` is not a partner in partners.toml"
                )],
            };
        };
        let mut lines = Vec::new();
        for a in self.agreements() {
            let receives = a.recipients.contains(&partner.id, partner.kind);
            let provides = a.providers.contains(&partner.id, partner.kind);
            let read = a.read.get(dataset).filter(|_| receives);
            let upload = a.upload.get(dataset).filter(|_| provides);
            if read.is_none() && upload.is_none() {
                continue;
            }
            let dates = format!("in force {} to {}", a.valid_from, a.valid_until);
            if !a.in_force(today) {
                lines.push(format!(
                    "agreement `{}` ({}): does not apply: not in force on {today} ({dates})",
                    a.id, a.file
                ));
                continue;
            }
            if let Some(up) = upload {
                let filter = ScopeFilter::resolve(up.scope, partner);
                lines.push(format!(
                    "agreement `{}`: lets {} upload {dataset}, {} ({dates})",
                    a.id,
                    partner.id,
                    scope_text(up.scope, &filter)
                ));
            }
            let Some(r) = read else { continue };
            if !Purpose::known(purpose).is_ok_and(|p| a.permits_purpose(&p)) {
                lines.push(format!(
                    "agreement `{}`: does not apply: it permits the purposes {}, not {purpose}",
                    a.id,
                    a.purposes.join(", ")
                ));
                continue;
            }
            let filter = ScopeFilter::resolve(r.scope, partner);
            let access = match r.access {
                Access::Record => "record-level".to_owned(),
                Access::Aggregate => format!(
                    "aggregate only (groups of at least {} persons, counts rounded to {})",
                    r.min_count, r.round_to
                ),
            };
            let mut columns = Vec::new();
            for (c, rule) in r
                .hidden
                .iter()
                .map(|h| (h.clone(), ColumnRule::Hidden))
                .chain(
                    r.generalise
                        .iter()
                        .map(|(c, g)| (c.clone(), ColumnRule::Generalised(*g))),
                )
            {
                columns.push(match rule {
                    ColumnRule::Hidden => format!("{c} hidden"),
                    ColumnRule::Generalised(g) => {
                        format!("{c} generalised to {g:?}").to_lowercase()
                    }
                });
            }
            let columns = if columns.is_empty() {
                "all columns".into()
            } else {
                columns.join(", ")
            };
            lines.push(format!(
                "agreement `{}`: ALLOWS {} to read {dataset} for {purpose}: {access}, {}, {columns} ({dates}; lawful basis: {})",
                a.id,
                partner.id,
                scope_text(r.scope, &filter),
                a.lawful_basis.join("; ")
            ));
        }
        if lines.is_empty() {
            lines.push(format!("no agreement names {} as a recipient of {dataset}: the dataset does not exist for it (default deny)", partner.id));
        }
        // The verdict is the decision every door applies, not a re-derivation of it.
        let columns: Vec<&str> = concordat_core::Schemas::builtin()
            .get(dataset)
            .map(|s| s.columns.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        let decision = match (dataset.parse::<DatasetName>(), Purpose::known(purpose)) {
            (Ok(d), Ok(p)) => {
                self.effective_read(partner, &d, &columns, ForPurpose::One(&p), today)
            }
            _ => Err(crate::RefusalReason::NoAgreement),
        };
        let allowed = decision.is_ok();
        lines.push(match decision {
            Ok(read) => {
                let how = match read.terms {
                    None => "record-level".to_owned(),
                    Some(t) => format!(
                        "aggregate only (groups of at least {} persons, counts rounded to {})",
                        t.min_count, t.round_to
                    ),
                };
                format!(
                    "ALLOWED: {} may read {dataset} for {purpose} on {today}, {how}, under {}",
                    partner.id,
                    crate::ids(read.agreements()).join(", ")
                )
            }
            Err(reason) => format!(
                "REFUSED ({}): no agreement in force lets {} read {dataset} for {purpose} on {today}",
                reason.code(),
                partner.id
            ),
        });
        Explanation { allowed, lines }
    }
}
