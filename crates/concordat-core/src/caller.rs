//! Who is asking: the verified identity every door hands to the services.

use crate::{Partner, Purpose, Role};

/// A verified caller. The partner comes from `partners.toml`, never from the credential,
/// so the force area and kind are the partner record's.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The credential's subject (a token subject, or a personal access token's name).
    pub subject: String,
    /// The partner, from `partners.toml`.
    pub partner: Partner,
    /// Roles granted by the credential.
    pub roles: Vec<Role>,
    /// Purposes the credential may declare (a personal access token's scope); empty
    /// means any purpose the partner's agreements permit.
    pub purposes: Vec<Purpose>,
}

impl Caller {
    /// Whether the credential may be used for the purpose.
    pub fn may_declare(&self, purpose: &Purpose) -> bool {
        self.purposes.is_empty() || self.purposes.contains(purpose)
    }

    /// Whether the caller holds any of the roles.
    pub fn has_any(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}
