//! Decisions: which agreements grant a partner what, today.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::NaiveDate;
use concordat_core::{AgreementId, DatasetName, Partner, Partners, Purpose, Reference};
use serde::Serialize;

use crate::PolicyError;
use crate::agreement::{Agreement, DatasetRead, RowScope};

/// The force areas whose rows a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeFilter {
    /// Every row.
    All,
    /// Rows whose force area code is in the set.
    Forces(BTreeSet<String>),
}

impl ScopeFilter {
    /// Whether a row of this force area is covered.
    pub fn allows(&self, pfa_code: &str) -> bool {
        match self {
            ScopeFilter::All => true,
            ScopeFilter::Forces(set) => set.contains(pfa_code),
        }
    }

    /// The rows either filter covers.
    pub fn union(self, other: ScopeFilter) -> ScopeFilter {
        match (self, other) {
            (ScopeFilter::Forces(mut a), ScopeFilter::Forces(b)) => {
                a.extend(b);
                ScopeFilter::Forces(a)
            }
            _ => ScopeFilter::All,
        }
    }

    /// Resolves a scope relative to a partner. A partner without the area a scope
    /// needs gets no rows (validation refuses such agreements; this is the backstop).
    pub fn resolve(scope: RowScope, partner: &Partner) -> ScopeFilter {
        let forces = Reference::builtin().forces();
        let pick = |keep: &dyn Fn(&concordat_core::Force) -> bool| {
            ScopeFilter::Forces(
                forces
                    .iter()
                    .filter(|f| keep(f))
                    .map(|f| f.pfa_code.to_string())
                    .collect(),
            )
        };
        match scope {
            RowScope::All => ScopeFilter::All,
            RowScope::OwnForceArea => {
                let own = partner.pfa_code.as_ref().map(|c| c.to_string());
                pick(&|f| Some(f.pfa_code.to_string()) == own)
            }
            RowScope::OwnRegion => {
                let region = partner.region();
                pick(&|f| Some(f.region.as_str()) == region)
            }
            RowScope::OwnProbationRegion => {
                let region = partner.probation_region();
                pick(&|f| Some(f.probation_region_code.as_str()) == region)
            }
        }
    }
}

/// Why a request was refused; the message names the agreement, never a data value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// No agreement grants it: the dataset is invisible to the partner.
    NoAgreement,
    /// The granting agreements are not in force today.
    NotInForce {
        agreement: AgreementId,
        valid_from: NaiveDate,
        valid_until: NaiveDate,
    },
    /// The granting agreements do not cover the declared purpose.
    PurposeNotCovered {
        agreement: AgreementId,
        purposes: Vec<String>,
    },
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefusalReason::NoAgreement => write!(f, "no agreement grants this"),
            RefusalReason::NotInForce {
                agreement,
                valid_from,
                valid_until,
            } => write!(
                f,
                "agreement `{agreement}` is in force only from {valid_from} to {valid_until}"
            ),
            RefusalReason::PurposeNotCovered {
                agreement,
                purposes,
            } => write!(
                f,
                "agreement `{agreement}` permits only the purposes: {}",
                purposes.join(", ")
            ),
        }
    }
}

/// The right to upload rows of a dataset.
#[derive(Debug, Clone)]
pub struct UploadGrant {
    /// Agreements that grant it.
    pub agreements: Vec<AgreementId>,
    /// Rows the partner may write: the union over the agreements.
    pub filter: ScopeFilter,
}

/// The right to read a dataset, from one agreement.
#[derive(Debug, Clone)]
pub struct ReadGrant {
    /// The agreement.
    pub agreement: AgreementId,
    /// Its terms for the dataset.
    pub terms: DatasetRead,
    /// Rows it covers for this partner.
    pub filter: ScopeFilter,
}

/// Which audit events a partner may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditView {
    /// All events.
    All,
    /// Events of these partners.
    Partners(BTreeSet<String>),
}

impl AuditView {
    /// Whether an event of this partner is visible.
    pub fn allows(&self, partner: Option<&str>) -> bool {
        match self {
            AuditView::All => true,
            AuditView::Partners(set) => partner.is_some_and(|p| set.contains(p)),
        }
    }
}

/// What a partner sees of a dataset when several grants apply at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CombinedView {
    /// Rows covered by any of the grants.
    pub scope: ScopeFilter,
    /// Per column (in the order given), the most restrictive rule of any grant: a column
    /// hidden by one grant is hidden for all the rows, a column coarsened by one grant is
    /// coarsened for all the rows. Combining the rows of one grant with the columns of
    /// another would show a column for rows whose grant hides it.
    pub rules: Vec<(String, Option<crate::ColumnRule>)>,
    /// Agreements combined.
    pub agreements: Vec<AgreementId>,
}

impl CombinedView {
    /// Combines grants over the given columns. `None` when there are no grants.
    pub fn of(grants: &[&ReadGrant], columns: &[&str]) -> Option<CombinedView> {
        let first = grants.first()?;
        let scope = grants
            .iter()
            .skip(1)
            .fold(first.filter.clone(), |acc, g| acc.union(g.filter.clone()));
        let rules = columns
            .iter()
            .map(|c| {
                let per_grant: Vec<Option<crate::ColumnRule>> =
                    grants.iter().map(|g| g.terms.column_rule(c)).collect();
                let rule = if per_grant.contains(&Some(crate::ColumnRule::Hidden)) {
                    Some(crate::ColumnRule::Hidden)
                } else {
                    per_grant.into_iter().flatten().next()
                };
                ((*c).to_owned(), rule)
            })
            .collect();
        Some(CombinedView {
            scope,
            rules,
            agreements: grants.iter().map(|g| g.agreement.clone()).collect(),
        })
    }
}

/// Partners and agreements, loaded and validated together.
#[derive(Debug, Clone)]
pub struct Policies {
    partners: Partners,
    agreements: Vec<Agreement>,
}

impl Policies {
    /// Loads `partners.toml` and every other `*.toml` in the directory as an agreement.
    /// Any file that does not parse or validate fails the whole load, naming the file.
    pub fn load(dir: &Path) -> Result<Policies, PolicyError> {
        let invalid = |file: &Path, message: String| PolicyError::Invalid {
            file: file.display().to_string(),
            message,
        };
        let partners_path = dir.join("partners.toml");
        let partners = Partners::load(&partners_path).map_err(|e| match e {
            concordat_core::CoreError::Definition { message, .. } => {
                invalid(&partners_path, message)
            }
            other => invalid(&partners_path, other.to_string()),
        })?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| invalid(dir, e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "toml")
                    && p.file_name() != Some("partners.toml".as_ref())
            })
            .collect();
        files.sort();
        let mut agreements = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| invalid(&path, e.to_string()))?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let agreement = Agreement::parse(&path.display().to_string(), stem, &text, &partners)
                .map_err(|m| invalid(&path, m))?;
            agreements.push(agreement);
        }
        Ok(Policies {
            partners,
            agreements,
        })
    }

    /// The partners.
    pub fn partners(&self) -> &Partners {
        &self.partners
    }

    /// Every agreement.
    pub fn agreements(&self) -> &[Agreement] {
        &self.agreements
    }

    /// Agreements in force today under which the partner provides or receives data.
    pub fn in_force_for(&self, partner: &Partner, today: NaiveDate) -> Vec<&Agreement> {
        self.agreements
            .iter()
            .filter(|a| a.in_force(today))
            .filter(|a| {
                (!a.upload.is_empty() && a.providers.contains(&partner.id, partner.kind))
                    || ((!a.read.is_empty() || a.audit.is_some())
                        && a.recipients.contains(&partner.id, partner.kind))
            })
            .collect()
    }

    /// Whether the partner may upload the dataset today, and which rows.
    pub fn upload_grant(
        &self,
        partner: &Partner,
        dataset: &DatasetName,
        today: NaiveDate,
    ) -> Result<UploadGrant, RefusalReason> {
        let dataset = dataset.as_str();
        let naming: Vec<&Agreement> = self
            .agreements
            .iter()
            .filter(|a| {
                a.upload.contains_key(dataset) && a.providers.contains(&partner.id, partner.kind)
            })
            .collect();
        let mut grant: Option<UploadGrant> = None;
        for a in naming.iter().filter(|a| a.in_force(today)) {
            let filter = ScopeFilter::resolve(a.upload[dataset].scope, partner);
            grant = Some(match grant {
                None => UploadGrant {
                    agreements: vec![a.id.clone()],
                    filter,
                },
                Some(mut g) => {
                    g.agreements.push(a.id.clone());
                    g.filter = g.filter.union(filter);
                    g
                }
            });
        }
        grant.ok_or_else(|| not_in_force(&naming))
    }

    /// Read grants of the partner for the dataset and purpose today.
    pub fn read_grants(
        &self,
        partner: &Partner,
        dataset: &DatasetName,
        purpose: &Purpose,
        today: NaiveDate,
    ) -> Result<Vec<ReadGrant>, RefusalReason> {
        let naming = self.naming_read(partner, dataset);
        let dataset = dataset.as_str();
        let in_force: Vec<&&Agreement> = naming.iter().filter(|a| a.in_force(today)).collect();
        if in_force.is_empty() {
            return Err(not_in_force(&naming));
        }
        let grants: Vec<ReadGrant> = in_force
            .iter()
            .filter(|a| a.permits_purpose(purpose))
            .map(|a| ReadGrant {
                agreement: a.id.clone(),
                terms: a.read[dataset].clone(),
                filter: ScopeFilter::resolve(a.read[dataset].scope, partner),
            })
            .collect();
        if grants.is_empty() {
            let a = in_force[0];
            return Err(RefusalReason::PurposeNotCovered {
                agreement: a.id.clone(),
                purposes: a.purposes.clone(),
            });
        }
        Ok(grants)
    }

    /// Read terms of every agreement in force today that lets the partner read the
    /// dataset, for any purpose.
    pub fn read_terms(
        &self,
        partner: &Partner,
        dataset: &DatasetName,
        today: NaiveDate,
    ) -> Vec<(&Agreement, &DatasetRead)> {
        let dataset = dataset.as_str();
        self.agreements
            .iter()
            .filter(|a| a.in_force(today) && a.recipients.contains(&partner.id, partner.kind))
            .filter_map(|a| a.read.get(dataset).map(|r| (a, r)))
            .collect()
    }

    /// The audit events the partner may read for the purpose today.
    pub fn audit_view(
        &self,
        partner: &Partner,
        purpose: &Purpose,
        today: NaiveDate,
    ) -> Result<AuditView, RefusalReason> {
        let naming = self.naming_audit(partner);
        let in_force: Vec<&&Agreement> = naming.iter().filter(|a| a.in_force(today)).collect();
        if in_force.is_empty() {
            return Err(not_in_force(&naming));
        }
        let mut view: Option<AuditView> = None;
        for a in in_force.iter().filter(|a| a.permits_purpose(purpose)) {
            let this = match a.audit.as_ref().map(|g| g.scope) {
                Some(crate::AuditScope::All) => AuditView::All,
                _ => {
                    let slug = partner
                        .pfa_code
                        .as_ref()
                        .and_then(|c| Reference::builtin().force(c.as_str()))
                        .map(|f| format!("pcc-{}", f.force_slug));
                    AuditView::Partners(slug.into_iter().collect())
                }
            };
            view = Some(match (view, this) {
                (Some(AuditView::All), _) | (_, AuditView::All) => AuditView::All,
                (Some(AuditView::Partners(mut a)), AuditView::Partners(b)) => {
                    a.extend(b);
                    AuditView::Partners(a)
                }
                (None, v) => v,
            });
        }
        view.ok_or_else(|| RefusalReason::PurposeNotCovered {
            agreement: in_force[0].id.clone(),
            purposes: in_force[0].purposes.clone(),
        })
    }
}

impl Policies {
    /// Agreements that name the partner as a recipient of the dataset, in force or not.
    pub(crate) fn naming_read(&self, partner: &Partner, dataset: &DatasetName) -> Vec<&Agreement> {
        self.agreements
            .iter()
            .filter(|a| {
                a.read.contains_key(dataset.as_str())
                    && a.recipients.contains(&partner.id, partner.kind)
            })
            .collect()
    }

    /// Agreements that let the partner read the audit trail, in force or not.
    fn naming_audit(&self, partner: &Partner) -> Vec<&Agreement> {
        self.agreements
            .iter()
            .filter(|a| a.audit.is_some() && a.recipients.contains(&partner.id, partner.kind))
            .collect()
    }

    /// The audit agreements in force today for the partner: those an audit read applies.
    pub fn audit_agreements(&self, partner: &Partner, today: NaiveDate) -> Vec<AgreementId> {
        self.naming_audit(partner)
            .into_iter()
            .filter(|a| a.in_force(today))
            .map(|a| a.id.clone())
            .collect()
    }
}

/// The refusal for a request that agreements name but none is in force today.
pub(crate) fn not_in_force(naming: &[&Agreement]) -> RefusalReason {
    match naming.first() {
        None => RefusalReason::NoAgreement,
        Some(a) => RefusalReason::NotInForce {
            agreement: a.id.clone(),
            valid_from: a.valid_from,
            valid_until: a.valid_until,
        },
    }
}
