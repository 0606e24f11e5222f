//! The one answer to "what may this partner read of this dataset, for this purpose,
//! today". Every consumer asks here: the dataset catalogue, the query service at every
//! door, the efficiency rebuild, extracts and `policy explain`.

use chrono::NaiveDate;
use concordat_core::{AgreementId, DatasetName, ErrorKind, Partner, Purpose};

use crate::agreement::{Access, ColumnRule, DatasetRead};
use crate::decide::{CombinedView, Policies, ReadGrant, RefusalReason, ScopeFilter};

/// Disclosure terms for aggregate-only access: the strictest of the granting agreements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DisclosureTerms {
    /// Smallest number of distinct persons behind a released figure.
    pub min_count: u64,
    /// Released counts are rounded to a multiple of this.
    pub round_to: u64,
}

impl DisclosureTerms {
    /// The terms when nothing stricter is agreed.
    pub const DEFAULT: DisclosureTerms = DisclosureTerms {
        min_count: 10,
        round_to: 5,
    };

    /// The strictest terms of the given reads (the default when there are none).
    pub fn strictest<'a>(reads: impl Iterator<Item = &'a DatasetRead>) -> DisclosureTerms {
        let mut terms: Option<DisclosureTerms> = None;
        for r in reads {
            let (min_count, round_to) = (u64::from(r.min_count), u64::from(r.round_to));
            terms = Some(match terms {
                None => DisclosureTerms {
                    min_count,
                    round_to,
                },
                Some(t) => DisclosureTerms {
                    min_count: t.min_count.max(min_count),
                    round_to: t.round_to.max(round_to),
                },
            });
        }
        terms.unwrap_or(DisclosureTerms::DEFAULT)
    }
}

/// Which purposes a decision is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForPurpose<'a> {
    /// One declared purpose: what a query, extract or upload is decided under.
    One(&'a Purpose),
    /// Any purpose the agreements permit: what the dataset catalogue shows, before the
    /// caller has declared one.
    Any,
}

/// What a partner may read of a dataset.
#[derive(Debug, Clone)]
pub struct EffectiveRead {
    /// Record-level rows, or aggregates under disclosure control. Record access wins
    /// where both are granted: the aggregate grants then do not apply.
    pub access: Access,
    /// Rows covered and the rule on each column (in the order asked), combined over the
    /// grants that apply: rows of any, the strictest column rule of any.
    pub view: CombinedView,
    /// Disclosure terms, for aggregate access.
    pub terms: Option<DisclosureTerms>,
    /// The grants that apply, one per agreement.
    pub grants: Vec<ReadGrant>,
}

impl EffectiveRead {
    /// The agreements that grant it.
    pub fn agreements(&self) -> &[AgreementId] {
        &self.view.agreements
    }

    /// The rule on a column, if any.
    pub fn column_rule(&self, column: &str) -> Option<&ColumnRule> {
        self.view
            .rules
            .iter()
            .find(|(c, _)| c == column)
            .and_then(|(_, r)| r.as_ref())
    }

    /// Purposes the applying agreements permit.
    pub fn purposes<'p>(&self, policies: &'p Policies) -> Vec<&'p str> {
        let mut out: Vec<&str> = policies
            .agreements()
            .iter()
            .filter(|a| self.view.agreements.contains(&a.id))
            .flat_map(|a| a.purposes.iter().map(String::as_str))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl RefusalReason {
    /// The stable code every door answers this refusal with.
    pub fn code(&self) -> &'static str {
        match self {
            RefusalReason::NoAgreement => "not_found",
            RefusalReason::NotInForce { .. } => "agreement_not_in_force",
            RefusalReason::PurposeNotCovered { .. } => "purpose_not_permitted",
        }
    }

    /// The kind: an invisible dataset is not found, any other refusal is forbidden.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RefusalReason::NoAgreement => ErrorKind::NotFound,
            _ => ErrorKind::Forbidden,
        }
    }
}

impl Policies {
    /// What the partner may read of the dataset for the purpose today, or why not.
    /// `columns` are the dataset's columns, in the order the view's rules are wanted.
    pub fn effective_read(
        &self,
        partner: &Partner,
        dataset: &DatasetName,
        columns: &[&str],
        purpose: ForPurpose<'_>,
        today: NaiveDate,
    ) -> Result<EffectiveRead, RefusalReason> {
        let grants = match purpose {
            ForPurpose::One(p) => self.read_grants(partner, dataset, p, today)?,
            ForPurpose::Any => {
                let grants: Vec<ReadGrant> = self
                    .read_terms(partner, dataset, today)
                    .into_iter()
                    .map(|(a, r)| ReadGrant {
                        agreement: a.id.clone(),
                        terms: r.clone(),
                        filter: ScopeFilter::resolve(r.scope, partner),
                    })
                    .collect();
                if grants.is_empty() {
                    // None names it, or those that do are not in force.
                    return Err(crate::decide::not_in_force(
                        &self.naming_read(partner, dataset),
                    ));
                }
                grants
            }
        };
        let record: Vec<ReadGrant> = grants
            .iter()
            .filter(|g| g.terms.access == Access::Record)
            .cloned()
            .collect();
        let (access, chosen) = if record.is_empty() {
            (Access::Aggregate, grants)
        } else {
            (Access::Record, record)
        };
        let view = CombinedView::of(&chosen.iter().collect::<Vec<_>>(), columns)
            .ok_or(RefusalReason::NoAgreement)?;
        let terms = (access == Access::Aggregate)
            .then(|| DisclosureTerms::strictest(chosen.iter().map(|g| &g.terms)));
        Ok(EffectiveRead {
            access,
            view,
            terms,
            grants: chosen,
        })
    }

    /// The disclosure terms for figures derived from these record-level datasets and
    /// published to every recipient of the derived dataset: the strictest terms any
    /// agreement puts on aggregate reads of them, so no recipient learns through the
    /// derived figures what its own agreement would not release.
    pub fn derived_terms(&self, inputs: &[&str]) -> DisclosureTerms {
        DisclosureTerms::strictest(
            self.agreements()
                .iter()
                .flat_map(|a| a.read.iter())
                .filter(|(d, r)| inputs.contains(&d.as_str()) && r.access == Access::Aggregate)
                .map(|(_, r)| r),
        )
    }
}
