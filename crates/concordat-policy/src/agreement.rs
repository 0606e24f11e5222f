//! The agreement file format (`policies/*.toml`) and its validation.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use concordat_core::schema::ColumnType;
use concordat_core::{
    AgreementId, DatasetLevel, PartnerId, PartnerKind, Partners, Purpose, Schemas,
};
use serde::{Deserialize, Serialize};

/// Who an agreement speaks of: named partners, kinds of partner, or everyone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartySet {
    /// Partner ids.
    #[serde(default)]
    pub partners: Vec<PartnerId>,
    /// Partner kinds.
    #[serde(default)]
    pub kinds: Vec<PartnerKind>,
    /// Every partner.
    #[serde(default)]
    pub everyone: bool,
}

impl PartySet {
    /// Whether the partner is in the set.
    pub fn contains(&self, id: &PartnerId, kind: PartnerKind) -> bool {
        self.everyone || self.partners.contains(id) || self.kinds.contains(&kind)
    }

    fn is_empty(&self) -> bool {
        !self.everyone && self.partners.is_empty() && self.kinds.is_empty()
    }
}

/// Which rows of a dataset a grant covers, relative to the partner holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowScope {
    /// Every row.
    All,
    /// Rows of the partner's own police force area.
    OwnForceArea,
    /// Rows of the force areas in the partner's region (of England, or Wales).
    OwnRegion,
    /// Rows of the force areas in the partner's probation region.
    OwnProbationRegion,
}

/// Record-level or aggregate-only reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Rows as stored (subject to column rules).
    Record,
    /// Only aggregates that pass disclosure control.
    Aggregate,
}

/// How a masked column is coarsened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Generalise {
    /// A date becomes the first day of its month.
    Month,
    /// A date becomes the first day of its year.
    Year,
}

/// A rule on one column of a read grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnRule {
    /// The column does not exist for the recipient.
    Hidden,
    /// The column is coarsened.
    Generalised(Generalise),
}

/// Which audit events a recipient may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditScope {
    /// Every event.
    All,
    /// Events of the Police and Crime Commissioner of the recipient's force area.
    OwnPcc,
}

/// The right to read the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditGrant {
    /// Events covered.
    pub scope: AuditScope,
}

/// An upload right granted to the agreement's providers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetUpload {
    /// Rows the provider may write.
    pub scope: RowScope,
}

/// A read right granted to the agreement's recipients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRead {
    /// Record or aggregate.
    pub access: Access,
    /// Rows the recipient may read.
    pub scope: RowScope,
    /// Columns that do not exist for the recipient.
    #[serde(default)]
    pub hidden: Vec<String>,
    /// Columns coarsened for the recipient.
    #[serde(default)]
    pub generalise: BTreeMap<String, Generalise>,
    /// Smallest number of distinct persons behind a released aggregate (aggregate access).
    #[serde(default = "default_min_count")]
    pub min_count: u32,
    /// Released counts are rounded to a multiple of this (aggregate access).
    #[serde(default = "default_round_to")]
    pub round_to: u32,
}

fn default_min_count() -> u32 {
    10
}
fn default_round_to() -> u32 {
    5
}

impl DatasetRead {
    /// The rule on a column, if any.
    pub fn column_rule(&self, column: &str) -> Option<ColumnRule> {
        if self.hidden.iter().any(|h| h == column) {
            Some(ColumnRule::Hidden)
        } else {
            self.generalise
                .get(column)
                .map(|g| ColumnRule::Generalised(*g))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgreementFile {
    id: Option<String>,
    title: String,
    #[serde(default)]
    lawful_basis: Vec<String>,
    purposes: Vec<String>,
    valid_from: Option<toml::Value>,
    valid_until: Option<toml::Value>,
    providers: PartySet,
    #[serde(default)]
    recipients: PartySet,
    #[serde(default)]
    upload: BTreeMap<String, DatasetUpload>,
    #[serde(default)]
    read: BTreeMap<String, DatasetRead>,
    #[serde(default)]
    audit: Option<AuditGrant>,
}

/// One agreement, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// Identifier: the file name without `.toml`.
    pub id: AgreementId,
    /// Human title.
    pub title: String,
    /// The law that permits the sharing.
    pub lawful_basis: Vec<String>,
    /// Purposes the data may be used for; `any` allows every purpose.
    pub purposes: Vec<String>,
    /// First day in force.
    pub valid_from: NaiveDate,
    /// Last day in force.
    pub valid_until: NaiveDate,
    /// Who provides the data (and may upload it where `upload` says so).
    pub providers: PartySet,
    /// Who may read it.
    pub recipients: PartySet,
    /// Upload rights of the providers, by dataset.
    pub upload: BTreeMap<String, DatasetUpload>,
    /// Read rights of the recipients, by dataset.
    pub read: BTreeMap<String, DatasetRead>,
    /// The recipients' right to read the audit trail.
    pub audit: Option<AuditGrant>,
    /// The file it came from.
    #[serde(skip)]
    pub file: String,
}

const DEFAULT_FROM: (i32, u32, u32) = (2024, 4, 1);
const DEFAULT_UNTIL: (i32, u32, u32) = (2027, 3, 31);

impl Agreement {
    /// Whether the agreement is in force on the day.
    pub fn in_force(&self, today: NaiveDate) -> bool {
        self.valid_from <= today && today <= self.valid_until
    }

    /// Whether it permits the purpose.
    pub fn permits_purpose(&self, purpose: &Purpose) -> bool {
        self.purposes
            .iter()
            .any(|p| p == purpose.as_str() || p == "any")
    }

    /// Parses and validates one agreement file against the partners and schemas.
    pub(crate) fn parse(
        file: &str,
        stem: &str,
        text: &str,
        partners: &Partners,
    ) -> Result<Agreement, String> {
        let raw: AgreementFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let field = |name: &str, msg: String| format!("field `{name}`: {msg}");
        if let Some(id) = &raw.id
            && id != stem
        {
            return Err(field(
                "id",
                format!("`{id}` must equal the file name `{stem}`"),
            ));
        }
        let date = |name: &str,
                    v: Option<toml::Value>,
                    default: (i32, u32, u32)|
         -> Result<NaiveDate, String> {
            let text = match v {
                None => {
                    return NaiveDate::from_ymd_opt(default.0, default.1, default.2)
                        .ok_or_else(|| field(name, "bad default".into()));
                }
                Some(toml::Value::String(s)) => s,
                Some(toml::Value::Datetime(d)) => d.to_string(),
                Some(other) => {
                    return Err(field(
                        name,
                        format!("expected a date, found {}", other.type_str()),
                    ));
                }
            };
            NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                .map_err(|_| field(name, format!("`{text}` is not a date YYYY-MM-DD")))
        };
        let valid_from = date("valid_from", raw.valid_from, DEFAULT_FROM)?;
        let valid_until = date("valid_until", raw.valid_until, DEFAULT_UNTIL)?;
        if valid_until < valid_from {
            return Err(field(
                "valid_until",
                format!("{valid_until} is before valid_from {valid_from}"),
            ));
        }
        if raw.purposes.is_empty() {
            return Err(field("purposes", "at least one purpose is required".into()));
        }
        for p in &raw.purposes {
            if p != "any" && !Purpose::KNOWN.contains(&p.as_str()) {
                return Err(field(
                    "purposes",
                    format!(
                        "unknown purpose `{p}` (known: {}, or any)",
                        Purpose::KNOWN.join(", ")
                    ),
                ));
            }
        }
        if raw.providers.is_empty() {
            return Err(field("providers", "names no partner or kind".into()));
        }
        for (name, set) in [
            ("providers", &raw.providers),
            ("recipients", &raw.recipients),
        ] {
            for id in &set.partners {
                if partners.get(id.as_str()).is_none() {
                    return Err(field(
                        &format!("{name}.partners"),
                        format!("unknown partner `{id}`"),
                    ));
                }
            }
        }
        if raw.upload.is_empty() && raw.read.is_empty() && raw.audit.is_none() {
            return Err(
                "grants nothing: add an [upload.<dataset>], [read.<dataset>] or [audit] table"
                    .into(),
            );
        }
        if (!raw.read.is_empty() || raw.audit.is_some()) && raw.recipients.is_empty() {
            return Err(field(
                "recipients",
                "read and audit grants need recipients".into(),
            ));
        }
        if let Some(a) = &raw.audit
            && a.scope == AuditScope::OwnPcc
        {
            for p in partners
                .iter()
                .filter(|p| raw.recipients.contains(&p.id, p.kind))
            {
                if p.pfa_code.is_none() {
                    return Err(field(
                        "audit.scope",
                        format!(
                            "partner `{}` has no force area, so own_pcc does not apply",
                            p.id
                        ),
                    ));
                }
            }
        }
        let schemas = Schemas::builtin();
        for (dataset, up) in &raw.upload {
            let at = |f: &str| format!("upload.{dataset}.{f}");
            let schema = schemas
                .get(dataset)
                .ok_or_else(|| field(&format!("upload.{dataset}"), "unknown dataset".into()))?;
            if !schema.is_uploadable() {
                return Err(field(
                    &format!("upload.{dataset}"),
                    "this dataset is not uploaded by partners".into(),
                ));
            }
            for (id, kind) in parties(&raw.providers, partners) {
                if !schema.provider_kinds.contains(&kind) {
                    return Err(field(
                        "providers",
                        format!(
                            "`{id}` ({kind}) may not provide {dataset}: its providers are {}",
                            kinds_text(&schema.provider_kinds)
                        ),
                    ));
                }
            }
            check_scope(
                &at("scope"),
                up.scope,
                &raw.providers,
                partners,
                schema.force_column.is_some(),
            )?;
        }
        for (dataset, read) in &raw.read {
            let at = |f: &str| format!("read.{dataset}.{f}");
            let schema = schemas
                .get(dataset)
                .ok_or_else(|| field(&format!("read.{dataset}"), "unknown dataset".into()))?;
            check_scope(
                &at("scope"),
                read.scope,
                &raw.recipients,
                partners,
                schema.force_column.is_some(),
            )?;
            if read.access == Access::Aggregate && schema.level != DatasetLevel::Record {
                return Err(field(
                    &at("access"),
                    "aggregate access applies to record-level datasets only".into(),
                ));
            }
            if read.min_count == 0 || read.round_to == 0 {
                return Err(field(
                    &at("min_count"),
                    "min_count and round_to must be at least 1".into(),
                ));
            }
            for h in &read.hidden {
                if schema.column(h).is_none() {
                    return Err(field(&at("hidden"), format!("unknown column `{h}`")));
                }
            }
            for c in read.generalise.keys() {
                match schema.column(c) {
                    None => return Err(field(&at("generalise"), format!("unknown column `{c}`"))),
                    Some(col) if col.data_type != ColumnType::Date32 => {
                        return Err(field(
                            &at("generalise"),
                            format!("column `{c}` is not a date"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(Agreement {
            id: stem
                .parse()
                .map_err(|e: concordat_core::CoreError| format!("file name: {e}"))?,
            title: raw.title,
            lawful_basis: raw.lawful_basis,
            purposes: raw.purposes,
            valid_from,
            valid_until,
            providers: raw.providers,
            recipients: raw.recipients,
            upload: raw.upload,
            read: raw.read,
            audit: raw.audit,
            file: file.to_owned(),
        })
    }
}

fn kinds_text(kinds: &[PartnerKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every partner a set names, with its kind.
fn parties<'a>(
    set: &'a PartySet,
    partners: &'a Partners,
) -> impl Iterator<Item = (PartnerId, PartnerKind)> + 'a {
    partners
        .iter()
        .filter(|p| set.contains(&p.id, p.kind))
        .map(|p| (p.id.clone(), p.kind))
}

/// A scope relative to the partner needs every partner in the set to have that area.
fn check_scope(
    at: &str,
    scope: RowScope,
    set: &PartySet,
    partners: &Partners,
    has_force_column: bool,
) -> Result<(), String> {
    if scope == RowScope::All {
        return Ok(());
    }
    if !has_force_column {
        return Err(format!(
            "field `{at}`: the dataset has no force area column, so only `all` applies"
        ));
    }
    for p in partners.iter().filter(|p| set.contains(&p.id, p.kind)) {
        let has_area = match scope {
            RowScope::All => true,
            RowScope::OwnForceArea | RowScope::OwnRegion => p.pfa_code.is_some(),
            RowScope::OwnProbationRegion => p.probation_region().is_some(),
        };
        if !has_area {
            return Err(format!(
                "field `{at}`: partner `{}` has no area for scope {scope:?}",
                p.id
            ));
        }
    }
    Ok(())
}
