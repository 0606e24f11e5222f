//! The 43 police force areas of England and Wales and the probation regions they lie in,
//! shipped with Concordat (`schemas/police_forces.csv`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::names::PfaCode;

const FORCES_CSV: &str = include_str!("../../../schemas/police_forces.csv");

/// One police force area.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Force {
    /// ONS code, `E23000032`.
    pub pfa_code: PfaCode,
    /// Short name used in partner ids, `kent`.
    pub force_slug: String,
    /// `Kent Police`.
    pub force_name: String,
    /// Region of England, or Wales.
    pub region: String,
    /// HMPPS probation region, `N57`.
    pub probation_region_code: String,
    /// `Kent, Surrey and Sussex`.
    pub probation_region_name: String,
    /// England or Wales.
    pub country: String,
}

/// The reference geography.
#[derive(Debug)]
pub struct Reference {
    forces: Vec<Force>,
    by_code: BTreeMap<String, usize>,
    regions: BTreeMap<String, String>,
}

impl Reference {
    /// The shipped reference, parsed once.
    pub fn builtin() -> &'static Reference {
        static REF: OnceLock<Reference> = OnceLock::new();
        REF.get_or_init(|| {
            // The file is part of the binary and covered by tests: a failure here is a
            // build defect, not an input error.
            Reference::parse(FORCES_CSV)
                .unwrap_or_else(|e| panic!("shipped police_forces.csv: {e}"))
        })
    }

    /// Parses a `police_forces.csv` text.
    pub fn parse(text: &str) -> Result<Reference, CoreError> {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let mut forces = Vec::new();
        for (i, row) in reader.deserialize::<Force>().enumerate() {
            let force = row.map_err(|e| {
                CoreError::definition("police_forces.csv", format!("row {}: {e}", i + 1))
            })?;
            forces.push(force);
        }
        let by_code = forces
            .iter()
            .enumerate()
            .map(|(i, f)| (f.pfa_code.to_string(), i))
            .collect();
        let regions = forces
            .iter()
            .map(|f| {
                (
                    f.probation_region_code.clone(),
                    f.probation_region_name.clone(),
                )
            })
            .collect();
        Ok(Reference {
            forces,
            by_code,
            regions,
        })
    }

    /// All forces, in file order.
    pub fn forces(&self) -> &[Force] {
        &self.forces
    }

    /// The force with this code.
    pub fn force(&self, code: &str) -> Option<&Force> {
        self.by_code.get(code).map(|&i| &self.forces[i])
    }

    /// The force with this slug.
    pub fn force_by_slug(&self, slug: &str) -> Option<&Force> {
        self.forces.iter().find(|f| f.force_slug == slug)
    }

    /// Whether the probation region code exists.
    pub fn is_probation_region(&self, code: &str) -> bool {
        self.regions.contains_key(code)
    }

    /// Probation region codes and names.
    pub fn probation_regions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.regions.iter().map(|(c, n)| (c.as_str(), n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ships_43_forces_and_12_probation_regions() {
        let r = Reference::builtin();
        assert_eq!(r.forces().len(), 43);
        assert_eq!(r.probation_regions().count(), 12);
        let kent = r.force("E23000032").expect("Kent");
        assert_eq!(kent.force_slug, "kent");
        assert_eq!(kent.probation_region_name, "Kent, Surrey and Sussex");
        assert_eq!(
            r.force_by_slug("dyfed-powys").map(|f| f.pfa_code.as_str()),
            Some("W15000004")
        );
        assert!(r.is_probation_region("N03"));
        assert!(!r.is_probation_region("N99"));
    }
}
