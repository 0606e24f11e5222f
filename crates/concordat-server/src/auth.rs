//! Bearer-token verification. The algorithms are pinned by configuration; a token's own
//! header only selects among keys we already trust. A token names its partner; the
//! partner's kind and area come from `partners.toml`.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use concordat_core::{Partners, Role};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// Claims Concordat reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    // Defaults let the validator, not the parser, report a missing claim.
    /// Issuer.
    #[serde(default)]
    pub iss: String,
    /// Audience.
    #[serde(default)]
    pub aud: serde_json::Value,
    /// Subject: the person or service acting.
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub exp: u64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Partner id the subject acts for.
    #[serde(default)]
    pub partner: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
}

pub use concordat_core::Caller;

/// Why a token was refused. The text is safe to return: it never echoes the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("a bearer token is required")]
    Missing,
    /// Signature, algorithm, claims or time checks failed.
    #[error("the token is not valid: {0}")]
    Invalid(&'static str),
    /// The token names a partner that does not exist.
    #[error("the token names an unknown partner")]
    UnknownPartner,
}

/// A personal access token as a caller: its partner from `partners.toml` (a token
/// naming a partner that no longer exists is refused), its roles and purposes.
pub fn token_caller(
    token: &concordat_store::tokens::TokenInfo,
    partners: &Partners,
) -> Result<Caller, AuthError> {
    let partner = partners
        .get(token.partner.as_str())
        .ok_or(AuthError::UnknownPartner)?
        .clone();
    Ok(Caller {
        subject: format!("{} (token {})", token.created_by, token.id),
        partner,
        roles: token.roles.clone(),
        purposes: token.purposes.clone(),
    })
}

/// Keys that could not be read or used; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl From<String> for KeyError {
    fn from(s: String) -> Self {
        KeyError(s)
    }
}

impl From<&str> for KeyError {
    fn from(s: &str) -> Self {
        KeyError(s.to_owned())
    }
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    issuer: String,
    audience: String,
    leeway: u64,
    hs256: Option<DecodingKey>,
    /// Asymmetric keys by key id, each with the one algorithm it may verify.
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    allowed: Vec<Algorithm>,
    /// Tokens already verified, by their SHA-256: an analyst's token, presented with every
    /// query, has its signature checked once; each use still checks its times.
    verified: std::sync::Mutex<HashMap<[u8; 32], Claims>>,
}

/// Verified tokens remembered at most; beyond, the memory starts afresh.
const VERIFIED_KEPT: usize = 4096;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("allowed", &self.allowed)
            .finish()
    }
}

fn parse_alg(s: &str) -> Option<Algorithm> {
    match s {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        "HS256" => Some(Algorithm::HS256),
        _ => None,
    }
}

impl Verifier {
    /// Builds a verifier from configuration, reading the key files.
    pub fn from_config(cfg: &AuthConfig) -> Result<Verifier, KeyError> {
        let allowed: Vec<Algorithm> = cfg.algorithms.iter().filter_map(|a| parse_alg(a)).collect();
        let hs256 = match (&cfg.dev_secret_file, allowed.contains(&Algorithm::HS256)) {
            (Some(path), true) => {
                let secret = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                if secret.len() < 32 {
                    return Err(KeyError(format!(
                        "{}: the development secret must be at least 32 bytes",
                        path.display()
                    )));
                }
                Some(DecodingKey::from_secret(&secret))
            }
            _ => None,
        };
        let mut keys = HashMap::new();
        if let Some(path) = &cfg.jwks_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let alg = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                        Algorithm::ES256
                    }
                    AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    _ => {
                        return Err(KeyError(format!(
                            "{}: key {i} is not an RSA, P-256 or Ed25519 public key",
                            path.display()
                        )));
                    }
                };
                if !allowed.contains(&alg) {
                    continue;
                }
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("{}: key {i}: {e}", path.display()))?;
                let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
                keys.insert(kid, (alg, key));
            }
        }
        Ok(Verifier {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_seconds,
            hs256,
            keys,
            allowed,
            verified: std::sync::Mutex::default(),
        })
    }

    /// Verifies a token and resolves its partner.
    pub fn verify(&self, token: &str, partners: &Partners) -> Result<Caller, AuthError> {
        self.verify_at(token, partners, jsonwebtoken::get_current_timestamp())
    }

    /// [`Verifier::verify`] at `now` (seconds since the epoch). A token verified before
    /// is not verified again, but its times are checked as the verifier checks them.
    fn verify_at(&self, token: &str, partners: &Partners, now: u64) -> Result<Caller, AuthError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let kept = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            .cloned();
        let claims = match kept {
            Some(claims) => {
                if claims.exp < now.saturating_sub(self.leeway) {
                    return Err(AuthError::Invalid("expired"));
                }
                if claims.nbf.is_some_and(|nbf| nbf > now + self.leeway) {
                    return Err(AuthError::Invalid("not yet valid"));
                }
                claims
            }
            None => {
                let claims = self.verify_signature(token)?;
                let mut verified = self
                    .verified
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if verified.len() >= VERIFIED_KEPT {
                    verified.clear();
                }
                verified.insert(digest, claims.clone());
                claims
            }
        };
        let partner = partners
            .get(&claims.partner)
            .ok_or(AuthError::UnknownPartner)?
            .clone();
        let roles = claims
            .roles
            .iter()
            .map(|r| r.parse::<Role>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| AuthError::Invalid("the token names an unknown role"))?;
        Ok(Caller {
            subject: claims.sub,
            partner,
            roles,
            purposes: Vec::new(),
        })
    }

    /// Checks a token's algorithm, key, signature and claims.
    fn verify_signature(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Invalid("malformed token or unsupported algorithm"))?;
        if !self.allowed.contains(&header.alg) {
            return Err(AuthError::Invalid("algorithm not accepted"));
        }
        let key = if header.alg == Algorithm::HS256 {
            self.hs256
                .as_ref()
                .ok_or(AuthError::Invalid("algorithm not accepted"))?
        } else {
            let found = match &header.kid {
                Some(kid) => self.keys.get(kid),
                None if self.keys.len() == 1 => self.keys.values().next(),
                None => None,
            };
            let (alg, key) = found.ok_or(AuthError::Invalid("unknown signing key"))?;
            // A key verifies only its own algorithm: no confusion between families.
            if *alg != header.alg {
                return Err(AuthError::Invalid(
                    "algorithm does not match the signing key",
                ));
            }
            key
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Invalid(match e.kind() {
                K::ExpiredSignature => "expired",
                K::ImmatureSignature => "not yet valid",
                K::InvalidAudience => "wrong audience",
                K::InvalidIssuer => "wrong issuer",
                K::InvalidSignature => "bad signature",
                K::MissingRequiredClaim(_) => "a required claim is missing",
                other => {
                    tracing::debug!(?other, "token refused");
                    "could not be verified"
                }
            })
        })?;
        Ok(data.claims)
    }
}

/// Signs development tokens with the key the configuration names.
pub struct DevSigner {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
}

impl DevSigner {
    /// The development signer of a configuration: the Ed25519 key if set, else the HS256 secret.
    pub fn from_config(cfg: &AuthConfig) -> Result<DevSigner, KeyError> {
        let (key, header) = if let Some(path) = &cfg.dev_signing_key {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let key =
                EncodingKey::from_ed_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut header = Header::new(Algorithm::EdDSA);
            header.kid = cfg.dev_key_id.clone();
            (key, header)
        } else if let Some(path) = &cfg.dev_secret_file {
            let secret = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            (
                EncodingKey::from_secret(&secret),
                Header::new(Algorithm::HS256),
            )
        } else {
            return Err("the configuration names no development key (auth.dev_signing_key or auth.dev_secret_file)".into());
        };
        Ok(DevSigner {
            key,
            header,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
        })
    }

    /// A token for the partner with the roles, valid for `ttl` seconds.
    pub fn issue(
        &self,
        subject: &str,
        partner: &str,
        roles: &[Role],
        ttl: u64,
    ) -> Result<String, KeyError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: serde_json::Value::String(self.audience.clone()),
            sub: subject.to_owned(),
            exp: now + ttl,
            nbf: Some(now.saturating_sub(5)),
            iat: Some(now),
            partner: partner.to_owned(),
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|e| KeyError(e.to_string()))
    }
}

/// Writes a fresh development key pair: `dev-ed25519.pem` (private, PKCS#8) and
/// `jwks.json` (public), plus a 32-byte HS256 secret `dev-hs256.secret`. Returns the key id.
pub fn write_dev_keys(dir: &Path) -> std::io::Result<String> {
    use rand::RngCore;
    std::fs::create_dir_all(dir)?;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let public = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    let mut der = hex_prefix();
    der.extend_from_slice(&seed);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    let kid = format!("concordat-dev-{}", &hex_string(&public)[..8]);
    let jwks = serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
        "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public),
    }]});
    write_private(&dir.join("dev-ed25519.pem"), pem.as_bytes())?;
    std::fs::write(
        dir.join("jwks.json"),
        serde_json::to_vec_pretty(&jwks).map_err(std::io::Error::other)?,
    )?;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    write_private(
        &dir.join("dev-hs256.secret"),
        hex_string(&secret).as_bytes(),
    )?;
    Ok(kid)
}

/// PKCS#8 prefix of an Ed25519 private key (RFC 8410).
fn hex_prefix() -> Vec<u8> {
    vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ]
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests;
