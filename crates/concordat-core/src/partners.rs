//! Partners: the bodies that exist for the gateway (`policies/partners.toml`).
//!
//! A partner's kind and area come from this file, never from a token: a token only says
//! which partner its holder acts for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::names::{PartnerId, PartnerKind, PfaCode};
use crate::reference::Reference;

/// One partner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    /// `pcc-kent`.
    pub id: PartnerId,
    /// What sort of body it is.
    pub kind: PartnerKind,
    /// Display name.
    pub name: String,
    /// The force area it serves, for local partners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pfa_code: Option<PfaCode>,
    /// The probation region it serves, for regional partners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_region_code: Option<String>,
}

impl Partner {
    /// The probation region of the partner: its own, or that of its force area.
    pub fn probation_region(&self) -> Option<&str> {
        self.probation_region_code.as_deref().or_else(|| {
            let code = self.pfa_code.as_ref()?;
            Reference::builtin()
                .force(code.as_str())
                .map(|f| f.probation_region_code.as_str())
        })
    }

    /// The region (of England, or Wales) of the partner's force area.
    pub fn region(&self) -> Option<&str> {
        let code = self.pfa_code.as_ref()?;
        Reference::builtin()
            .force(code.as_str())
            .map(|f| f.region.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnersFile {
    partner: Vec<Partner>,
}

/// Every partner, by id.
#[derive(Debug, Clone, Default)]
pub struct Partners {
    by_id: BTreeMap<PartnerId, Partner>,
}

impl Partners {
    /// Parses `partners.toml`; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Partners, CoreError> {
        let parsed: PartnersFile =
            toml::from_str(text).map_err(|e| CoreError::definition(file, e.to_string()))?;
        let reference = Reference::builtin();
        let mut by_id = BTreeMap::new();
        for (i, p) in parsed.partner.into_iter().enumerate() {
            let at = |field: &str, msg: String| {
                CoreError::definition(
                    file,
                    format!("partner[{i}] (`{}`), field `{field}`: {msg}", p.id),
                )
            };
            if let Some(code) = &p.pfa_code
                && reference.force(code.as_str()).is_none()
            {
                return Err(at(
                    "pfa_code",
                    format!("`{code}` is not one of the 43 force areas"),
                ));
            }
            if let Some(region) = &p.probation_region_code
                && !reference.is_probation_region(region)
            {
                return Err(at(
                    "probation_region_code",
                    format!("`{region}` is not a probation region"),
                ));
            }
            let local = matches!(
                p.kind,
                PartnerKind::Pcc | PartnerKind::PoliceForce | PartnerKind::PoliceCrimePanel
            );
            if local && p.pfa_code.is_none() {
                return Err(at(
                    "pfa_code",
                    format!("a {} partner must name its force area", p.kind),
                ));
            }
            if by_id.contains_key(&p.id) {
                return Err(at("id", "is declared twice".into()));
            }
            by_id.insert(p.id.clone(), p);
        }
        Ok(Partners { by_id })
    }

    /// Reads and parses a partners file.
    pub fn load(path: &std::path::Path) -> Result<Partners, CoreError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| CoreError::definition(&file, e.to_string()))?;
        Partners::parse(&file, &text)
    }

    /// The partner with this id.
    pub fn get(&self, id: &str) -> Option<&Partner> {
        self.by_id
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, p)| p)
    }

    /// All partners, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Partner> {
        self.by_id.values()
    }

    /// Number of partners.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_partners_file_has_every_fixed_id() {
        let path = &format!(
            "{}/../../policies/partners.toml",
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
        );
        let partners = Partners::load(std::path::Path::new(path)).expect("valid");
        for f in Reference::builtin().forces() {
            for prefix in ["pcc", "force", "panel"] {
                let p = partners
                    .get(&format!("{prefix}-{}", f.force_slug))
                    .unwrap_or_else(|| panic!("{prefix}-{}", f.force_slug));
                assert_eq!(p.pfa_code.as_ref(), Some(&f.pfa_code));
            }
        }
        for (id, kind) in [
            ("probation", PartnerKind::Probation),
            ("cps", PartnerKind::Cps),
            ("hmcts", PartnerKind::Hmcts),
            ("hmicfrs", PartnerKind::Inspectorate),
            ("home-office", PartnerKind::HomeOffice),
            ("operator", PartnerKind::Operator),
        ] {
            assert_eq!(partners.get(id).map(|p| p.kind), Some(kind), "{id}");
        }
        assert_eq!(partners.len(), 43 * 3 + 6);
        assert_eq!(
            partners.get("pcc-kent").and_then(Partner::probation_region),
            Some("N57")
        );
    }

    #[test]
    fn an_unknown_force_area_is_refused_naming_file_and_field() {
        let text =
            "[[partner]]\nid = \"pcc-x\"\nkind = \"pcc\"\nname = \"X\"\npfa_code = \"E23999999\"\n";
        let err = Partners::parse("p.toml", text)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("p.toml") && err.contains("pfa_code"), "{err}");
        let text = "[[partner]]\nid = \"pcc-x\"\nkind = \"pcc\"\nname = \"X\"\n";
        let err = Partners::parse("p.toml", text)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("must name its force area"), "{err}");
    }
}
