//! Every way a token must fail, and the way it must pass.

use base64::Engine;
use concordat_core::{Partners, Role};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;
use crate::config::AuthConfig;

struct Keys {
    _dir: tempfile::TempDir,
    cfg: AuthConfig,
    partners: Partners,
}

fn keys(algorithms: &[&str]) -> Keys {
    let dir = tempfile::tempdir().expect("tempdir");
    let kid = write_dev_keys(dir.path()).expect("keys");
    let cfg = AuthConfig {
        issuer: "concordat-test".into(),
        audience: "concordat".into(),
        algorithms: algorithms.iter().map(|a| (*a).to_owned()).collect(),
        jwks_file: Some(dir.path().join("jwks.json")),
        dev_secret_file: Some(dir.path().join("dev-hs256.secret")),
        dev_signing_key: Some(dir.path().join("dev-ed25519.pem")),
        dev_key_id: Some(kid),
        leeway_seconds: 0,
    };
    let root = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let partners =
        Partners::load(&std::path::Path::new(&root).join("../../policies/partners.toml"))
            .expect("partners");
    Keys {
        _dir: dir,
        cfg,
        partners,
    }
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

fn claims(k: &Keys) -> serde_json::Value {
    serde_json::json!({"iss": k.cfg.issuer, "aud": k.cfg.audience, "sub": "analyst@kent", "exp": now() + 600, "partner": "pcc-kent", "roles": ["analyst"]})
}

fn sign_ed(k: &Keys, claims: &serde_json::Value) -> String {
    let pem = std::fs::read(k.cfg.dev_signing_key.as_ref().expect("key")).expect("pem");
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = k.cfg.dev_key_id.clone();
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_pem(&pem).expect("key")).expect("sign")
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn verify(k: &Keys, token: &str) -> Result<Caller, AuthError> {
    Verifier::from_config(&k.cfg)
        .expect("verifier")
        .verify(token, &k.partners)
}

#[test]
fn a_good_token_resolves_the_partner_from_partners_toml_not_the_token() {
    let k = keys(&["EdDSA"]);
    let mut c = claims(&k);
    c["pfa_code"] = "E23000028".into();
    let caller = verify(&k, &sign_ed(&k, &c)).expect("valid");
    assert_eq!(caller.partner.id.as_str(), "pcc-kent");
    assert_eq!(
        caller.partner.pfa_code.as_ref().map(|c| c.as_str()),
        Some("E23000032"),
        "the token's pfa_code is ignored"
    );
    assert_eq!(caller.roles, vec![Role::Analyst]);
    let issued = DevSigner::from_config(&k.cfg)
        .expect("signer")
        .issue("u", "probation", &[Role::Uploader], 60)
        .expect("issue");
    assert_eq!(
        verify(&k, &issued).expect("dev token").partner.id.as_str(),
        "probation"
    );
}

#[test]
fn every_bad_token_is_refused() {
    let k = keys(&["EdDSA"]);
    let good = claims(&k);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = good.clone();
        f(&mut c);
        sign_ed(&k, &c)
    };
    let payload = b64(good.to_string().as_bytes());
    let jwks: serde_json::Value = serde_json::from_slice(
        &std::fs::read(k.cfg.jwks_file.as_ref().expect("jwks")).expect("read"),
    )
    .expect("json");
    let public_x = jwks["keys"][0]["x"].as_str().expect("x").to_owned();
    let confusion = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(public_x.as_bytes()),
    )
    .expect("hs");
    let good_token = sign_ed(&k, &good);
    let mut parts: Vec<&str> = good_token.split('.').collect();
    let tampered_payload = b64(good.to_string().replace("pcc-kent", "pcc-essex").as_bytes());
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");
    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
            AuthError::Invalid("malformed token or unsupported algorithm"),
        ),
        (
            "HS256 signed with the public key",
            confusion,
            AuthError::Invalid("algorithm not accepted"),
        ),
        (
            "expired",
            with(&|c| c["exp"] = (now() - 10).into()),
            AuthError::Invalid("expired"),
        ),
        (
            "not yet valid",
            with(&|c| c["nbf"] = (now() + 600).into()),
            AuthError::Invalid("not yet valid"),
        ),
        (
            "wrong audience",
            with(&|c| c["aud"] = "someone-else".into()),
            AuthError::Invalid("wrong audience"),
        ),
        (
            "wrong issuer",
            with(&|c| c["iss"] = "evil".into()),
            AuthError::Invalid("wrong issuer"),
        ),
        (
            "no audience",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("aud"));
            }),
            AuthError::Invalid("a required claim is missing"),
        ),
        (
            "no issuer",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("iss"));
            }),
            AuthError::Invalid("a required claim is missing"),
        ),
        (
            "no expiry",
            with(&|c| {
                c.as_object_mut().map(|o| o.remove("exp"));
            }),
            AuthError::Invalid("a required claim is missing"),
        ),
        (
            "unknown partner",
            with(&|c| c["partner"] = "pcc-atlantis".into()),
            AuthError::UnknownPartner,
        ),
        (
            "unknown role",
            with(&|c| c["roles"] = serde_json::json!(["analyst", "root"])),
            AuthError::Invalid("the token names an unknown role"),
        ),
        (
            "tampered payload",
            tampered,
            AuthError::Invalid("bad signature"),
        ),
        (
            "garbage",
            "not.a.token".into(),
            AuthError::Invalid("malformed token or unsupported algorithm"),
        ),
    ];
    for (what, token, want) in cases {
        assert_eq!(verify(&k, &token).err(), Some(want), "{what}");
    }
    // A token signed by another key pair is refused.
    let other = keys(&["EdDSA"]);
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = k.cfg.dev_key_id.clone();
    let pem = std::fs::read(other.cfg.dev_signing_key.as_ref().expect("key")).expect("pem");
    let forged = jsonwebtoken::encode(&h, &good, &EncodingKey::from_ed_pem(&pem).expect("key"))
        .expect("sign");
    assert_eq!(
        verify(&k, &forged).err(),
        Some(AuthError::Invalid("bad signature"))
    );
}

#[test]
fn hs256_is_accepted_only_when_configured() {
    let k = keys(&["EdDSA", "HS256"]);
    let secret = std::fs::read(k.cfg.dev_secret_file.as_ref().expect("secret")).expect("read");
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&k),
        &EncodingKey::from_secret(&secret),
    )
    .expect("hs");
    assert!(verify(&k, &hs).is_ok());
    let only_ed = keys(&["EdDSA"]);
    let secret =
        std::fs::read(only_ed.cfg.dev_secret_file.as_ref().expect("secret")).expect("read");
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&only_ed),
        &EncodingKey::from_secret(&secret),
    )
    .expect("hs");
    assert_eq!(
        verify(&only_ed, &hs).err(),
        Some(AuthError::Invalid("algorithm not accepted"))
    );
}

#[test]
fn a_token_verified_once_is_still_refused_once_expired_or_tampered() {
    let k = keys(&["EdDSA"]);
    let verifier = Verifier::from_config(&k.cfg).expect("verifier");
    let t = now();
    let mut c = claims(&k);
    c["exp"] = (t + 60).into();
    c["nbf"] = t.into();
    let token = sign_ed(&k, &c);
    for _ in 0..2 {
        let caller = verifier.verify_at(&token, &k.partners, t).expect("valid");
        assert_eq!(caller.partner.id.as_str(), "pcc-kent");
    }
    assert_eq!(
        verifier.verify_at(&token, &k.partners, t + 61).err(),
        Some(AuthError::Invalid("expired")),
        "remembered, but expired"
    );
    assert_eq!(
        verifier.verify_at(&token, &k.partners, t - 10).err(),
        Some(AuthError::Invalid("not yet valid"))
    );
    // The same claims with another signature are a different token, verified afresh.
    let (head, _) = token.rsplit_once('.').expect("jwt");
    let forged = format!("{head}.{}", b64(&[7u8; 64]));
    assert_eq!(
        verifier.verify_at(&forged, &k.partners, t).err(),
        Some(AuthError::Invalid("bad signature"))
    );
    // The partner still comes from partners.toml at each use.
    let none = Partners::default();
    assert_eq!(
        verifier.verify_at(&token, &none, t).err(),
        Some(AuthError::UnknownPartner)
    );
}
