//! Server configuration: defaults, then a TOML file, then `CONCORDAT_*` environment
//! variables (`CONCORDAT_LISTEN`, `CONCORDAT_AUTH__ISSUER`, `CONCORDAT_LIMITS__MAX_UPLOAD_BYTES`...).
//! Validated once at start; relative paths are relative to the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

/// Environment variables that are not settings.
const NOT_SETTINGS: [&str; 3] = ["CONCORDAT_FAULT", "CONCORDAT_LOG", "CONCORDAT_BIN"];

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where tables and staging live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Directory with `partners.toml` and the agreements.
    #[serde(default = "default_policies_dir")]
    pub policies_dir: PathBuf,
    /// Token verification.
    pub auth: AuthConfig,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Storage settings.
    #[serde(default)]
    pub store: StoreSettings,
    /// Query limits.
    #[serde(default)]
    pub query: QuerySettings,
    /// The Postgres wire door (psql, Power BI, Excel through ODBC); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg: Option<DoorSettings>,
    /// The Arrow Flight SQL door (ADBC, the Flight SQL JDBC driver); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flight: Option<DoorSettings>,
}

/// Where a door other than HTTP listens, and its certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoorSettings {
    /// Address to listen on; port 0 picks a free port.
    pub addr: SocketAddr,
    /// PEM certificate chain for TLS. Without one, only a loopback address is allowed.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl DoorSettings {
    fn validate(&self, name: &str) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) | (None, Some(_)) => Err(format!(
                "{name}: tls_cert and tls_key are given together or not at all"
            )),
            (None, None) if self.addr.ip().is_loopback() => Ok(()),
            (None, None) => Err(format!(
                "{name}.addr: {} is not a loopback address, so {name}.tls_cert and {name}.tls_key are required (plaintext only on loopback)",
                self.addr
            )),
        }
    }
}

/// Limits on SQL queries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Longest SQL text, bytes.
    pub max_sql_bytes: usize,
    /// Memory one query may use before spilling, MiB.
    pub memory_mb: usize,
    /// Disk one query may spill to, MiB.
    pub spill_mb: u64,
    /// Wall-clock limit, seconds.
    pub timeout_seconds: u64,
    /// Queries one partner may run at once; more wait their turn (within their timeout).
    pub per_partner: usize,
    /// Queries of one partner that may wait for a turn; beyond them, 429 with Retry-After.
    pub queue: usize,
    /// Rows a JSON answer holds at most; more are cut and `truncated` is set.
    pub max_json_rows: usize,
    /// Threads of the query runtime.
    pub threads: usize,
    /// Queries running at once across all partners.
    pub concurrent: usize,
    /// Most groups an aggregate over aggregate-only data may produce.
    pub max_groups: usize,
    /// Answers kept for reuse while their tables are unchanged, MiB (0: none).
    pub answer_cache_mb: usize,
    /// Plans kept for reuse while their tables are unchanged, MiB (0: none).
    pub plan_cache_mb: usize,
    /// The secret behind the record keys of disclosure control (cell key method): at
    /// least 32 bytes, created on first start if absent. Keep it apart from the data and
    /// identical on every replica; whoever holds it and the answers could undo the
    /// perturbation, and changing it changes every perturbed figure.
    pub record_key_file: PathBuf,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            max_sql_bytes: 64 * 1024,
            memory_mb: 512,
            spill_mb: 4096,
            timeout_seconds: 60,
            per_partner: 4,
            queue: 64,
            max_json_rows: 10_000,
            threads: 2,
            concurrent: 4,
            max_groups: 100_000,
            answer_cache_mb: 256,
            plan_cache_mb: 64,
            record_key_file: PathBuf::from("keys/record-key.secret"),
        }
    }
}

/// How bearer tokens are verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Accepted signature algorithms: any of RS256, ES256, EdDSA (with `jwks_file`) and
    /// HS256 (only with `dev_secret_file`). Pinned here, never taken from a token.
    pub algorithms: Vec<String>,
    /// Public keys (JWKS) for RS256, ES256 and EdDSA.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Development shared secret: enables HS256. Never in production.
    #[serde(default)]
    pub dev_secret_file: Option<PathBuf>,
    /// Development private key (Ed25519, PKCS#8 PEM) that `concordat token issue` signs with.
    #[serde(default)]
    pub dev_signing_key: Option<PathBuf>,
    /// Key id of the development key in the JWKS.
    #[serde(default)]
    pub dev_key_id: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
}

/// Limits on requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest upload in bytes.
    pub max_upload_bytes: u64,
    /// Uploads validated at once.
    pub concurrent_validations: usize,
    /// Data-segment limit of the process that decodes and validates an upload, MiB.
    pub validation_memory_mb: u64,
    /// Wall-clock limit on validating one upload, seconds.
    pub validation_timeout_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_bytes: 2 << 30,
            concurrent_validations: 2,
            validation_memory_mb: 1024,
            validation_timeout_seconds: 900,
        }
    }
}

/// Storage settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Days of history (time travel, provenance) each table keeps.
    pub log_retention_days: u32,
    /// Where the tables and every other durable state live: `s3://bucket/prefix` for an
    /// S3-compatible object store that several replicas share; a local path (the data
    /// directory) otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How to reach the S3-compatible store.
    #[serde(skip_serializing_if = "S3Config::is_unset")]
    pub s3: S3Config,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            log_retention_days: 3650,
            url: None,
            s3: S3Config::default(),
        }
    }
}

/// `[store.s3]`: how to reach an S3-compatible store; whatever is unset comes from the
/// usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL, for a store other than AWS (MinIO, Ceph, a local one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow an `http://` endpoint (a store on the same machine or network only).
    pub allow_http: bool,
    /// Access key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

impl S3Config {
    fn is_unset(&self) -> bool {
        self == &S3Config::default()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_policies_dir() -> PathBuf {
    PathBuf::from("policies")
}
fn default_leeway() -> u64 {
    30
}

/// A configuration that could not be loaded; the message names the file or variable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Loads a file and applies `CONCORDAT_*` overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        // The same path as `load_with_env`, so what the tests check is what runs. Only
        // variables whose name and value are text can be settings.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::load_with_env(path, vars)
    }

    /// Loads a file and applies overrides from the given variables instead of the
    /// process environment (for tests and tools).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut vars = figment::value::Dict::new();
        for (key, raw) in env {
            if NOT_SETTINGS.contains(&key.as_str()) {
                continue;
            }
            let Some(rest) = key.strip_prefix("CONCORDAT_") else {
                continue;
            };
            let value: figment::value::Value =
                raw.parse().unwrap_or(figment::value::Value::from(raw));
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            let mut nested = value;
            for part in path.iter().rev() {
                let mut d = figment::value::Dict::new();
                d.insert(part.clone(), nested);
                nested = figment::value::Value::from(d);
            }
            if let figment::value::Value::Dict(_, d) = nested {
                vars = merge(vars, d);
            }
        }
        Self::extract(
            path,
            Figment::new().merge(figment::providers::Serialized::defaults(vars)),
        )
    }

    /// The file, then the overrides, into the configuration; validated.
    fn extract(path: &Path, overrides: Figment) -> Result<Config, ConfigError> {
        let named = |e: figment::Error| {
            let mut text = String::new();
            for e in e {
                if !text.is_empty() {
                    text.push_str("; ");
                }
                let key = e.path.join(".");
                let from = e
                    .metadata
                    .as_ref()
                    .map_or(String::new(), |m| match &m.source {
                        Some(src) => format!(" (from {src})"),
                        // The file has a source; the other provider is the environment.
                        None => " (from a CONCORDAT_ environment variable)".to_owned(),
                    });
                if key.is_empty() {
                    text.push_str(&format!("{}{from}", e.kind));
                } else {
                    text.push_str(&format!("{key}: {}{from}", e.kind));
                }
            }
            ConfigError(format!("{}: {text}", path.display()))
        };
        if !path.is_file() {
            return Err(ConfigError(format!("{}: no such file", path.display())));
        }
        let mut cfg: Config = Figment::from(Toml::file_exact(path))
            .merge(overrides)
            .extract()
            .map_err(named)?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        cfg.validate()
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        // A store URL that is a local path (or `file://` URL) names the data directory.
        if let Some(url) = self.store.url.take() {
            if url.starts_with("s3://") {
                self.store.url = Some(url);
            } else {
                let path = url.strip_prefix("file://").unwrap_or(&url);
                self.data_dir = PathBuf::from(path);
            }
        }
        fix(&mut self.data_dir);
        fix(&mut self.policies_dir);
        fix(&mut self.query.record_key_file);
        if let Some(door) = &mut self.pg {
            for p in [&mut door.tls_cert, &mut door.tls_key]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        for p in [
            &mut self.auth.jwks_file,
            &mut self.auth.dev_secret_file,
            &mut self.auth.dev_signing_key,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    /// Where durable state lives: the data directory, or the shared store the URL names.
    pub fn location(&self) -> Result<concordat_store::Location, String> {
        let Some(url) = &self.store.url else {
            return Ok(concordat_store::Location::Local(self.data_dir.clone()));
        };
        let s3 = &self.store.s3;
        let settings = concordat_store::S3Settings {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            allow_http: s3.allow_http,
            access_key_id: s3.access_key_id.clone(),
            secret_access_key: s3.secret_access_key.clone(),
        };
        concordat_store::Shared::connect(url, &settings)
            .map(concordat_store::Location::Shared)
            .map_err(|e| format!("store.url: {e}"))
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.store.url {
            self.location()?;
            if url.trim_end_matches('/') == "s3:" {
                return Err("store.url: name a bucket, s3://bucket/prefix".into());
            }
        }
        if self.auth.algorithms.is_empty() {
            return Err("auth.algorithms: name at least one algorithm".into());
        }
        for alg in &self.auth.algorithms {
            match alg.as_str() {
                "RS256" | "ES256" | "EdDSA" if self.auth.jwks_file.is_none() => {
                    return Err(format!("auth.algorithms: {alg} needs auth.jwks_file"));
                }
                "HS256" if self.auth.dev_secret_file.is_none() => {
                    return Err("auth.algorithms: HS256 is only allowed with auth.dev_secret_file (development)".into());
                }
                "RS256" | "ES256" | "EdDSA" | "HS256" => {}
                other => {
                    return Err(format!(
                        "auth.algorithms: `{other}` is not accepted (RS256, ES256, EdDSA, HS256)"
                    ));
                }
            }
        }
        if self.limits.max_upload_bytes == 0 {
            return Err("limits.max_upload_bytes must be positive".into());
        }
        if let Some(door) = &self.pg {
            door.validate("pg")?;
        }
        if let Some(door) = &self.flight {
            door.validate("flight")?;
        }
        Ok(())
    }
}

/// Two dictionaries deep-merged, the second winning.
fn merge(mut a: figment::value::Dict, b: figment::value::Dict) -> figment::value::Dict {
    use figment::value::Value;
    for (k, v) in b {
        let merged = match (a.remove(&k), v) {
            (Some(Value::Dict(_, x)), Value::Dict(_, y)) => Value::from(merge(x, y)),
            (_, v) => v,
        };
        a.insert(k, merged);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("concordat.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    const BASE: &str = "listen = \"127.0.0.1:0\"\n[auth]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\ndev_secret_file = \"secret\"\n";

    #[test]
    fn a_door_beyond_loopback_needs_a_certificate() {
        for (door, extra) in [
            ("pg", "[pg]\naddr = \"0.0.0.0:5433\"\n"),
            ("flight", "[flight]\naddr = \"10.0.0.1:50051\"\n"),
            (
                "pg",
                "[pg]\naddr = \"127.0.0.1:5433\"\ntls_cert = \"c.pem\"\n",
            ),
        ] {
            let (_d, path) = write(&format!("{BASE}{extra}"));
            let err = Config::load_with_env(&path, []).expect_err(extra);
            assert!(err.to_string().contains(door), "{err}");
            assert!(err.to_string().contains("tls_"), "{err}");
        }
        let (d, path) = write(&format!(
            "{BASE}[pg]\naddr = \"0.0.0.0:5433\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[flight]\naddr = \"127.0.0.1:0\"\n"
        ));
        let cfg = Config::load_with_env(&path, []).expect("loads");
        let pg = cfg.pg.expect("pg");
        assert_eq!(pg.tls_cert, Some(d.path().join("c.pem")));
        assert!(cfg.flight.is_some_and(|f| f.tls_cert.is_none()));
    }

    #[test]
    fn environment_overrides_the_file_and_paths_are_relative_to_it() {
        let (dir, path) = write(BASE);
        let env = [
            (
                "CONCORDAT_LIMITS__MAX_UPLOAD_BYTES".to_owned(),
                "1234".to_owned(),
            ),
            ("CONCORDAT_AUTH__ISSUER".to_owned(), "other".to_owned()),
            ("CONCORDAT_FAULT".to_owned(), "x".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let cfg = Config::load_with_env(&path, env).expect("valid");
        assert_eq!(cfg.limits.max_upload_bytes, 1234);
        assert_eq!(cfg.auth.issuer, "other");
        assert_eq!(cfg.auth.dev_secret_file, Some(dir.path().join("secret")));
        assert_eq!(cfg.data_dir, dir.path().join("data"));
    }

    #[test]
    fn bad_settings_are_named() {
        let (_d, path) = write(BASE);
        let err = Config::load_with_env(&path, [("CONCORDAT_LISTN".to_owned(), "x".to_owned())])
            .expect_err("typo");
        assert!(err.to_string().contains("listn"), "{err}");
        let (_d, path) = write(&BASE.replace("HS256\"]", "none\"]"));
        let err = Config::load_with_env(&path, []).expect_err("none");
        assert!(err.to_string().contains("auth.algorithms"), "{err}");
        let (_d, path) = write(&BASE.replace("dev_secret_file = \"secret\"\n", ""));
        let err = Config::load_with_env(&path, []).expect_err("hs256 without secret");
        assert!(err.to_string().contains("dev_secret_file"), "{err}");
    }

    #[test]
    fn the_example_file_loads_and_states_every_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../concordat.example.toml");
        let cfg = Config::load_with_env(&path, []).expect("the example loads");
        let text = std::fs::read_to_string(&path).expect("read");
        let base = path.parent().expect("dir");
        assert_eq!(cfg.listen, default_listen());
        assert_eq!(cfg.data_dir, base.join(default_data_dir()));
        assert_eq!(cfg.policies_dir, base.join(default_policies_dir()));
        assert_eq!(cfg.auth.leeway_seconds, default_leeway());
        let q = QuerySettings::default();
        let l = Limits::default();
        let expect = [
            ("max_upload_bytes", l.max_upload_bytes.to_string()),
            (
                "concurrent_validations",
                l.concurrent_validations.to_string(),
            ),
            ("validation_memory_mb", l.validation_memory_mb.to_string()),
            (
                "validation_timeout_seconds",
                l.validation_timeout_seconds.to_string(),
            ),
            (
                "log_retention_days",
                StoreSettings::default().log_retention_days.to_string(),
            ),
            ("max_sql_bytes", q.max_sql_bytes.to_string()),
            ("memory_mb", q.memory_mb.to_string()),
            ("spill_mb", q.spill_mb.to_string()),
            ("timeout_seconds", q.timeout_seconds.to_string()),
            ("per_partner", q.per_partner.to_string()),
            ("queue", q.queue.to_string()),
            ("max_json_rows", q.max_json_rows.to_string()),
            ("threads", q.threads.to_string()),
            ("concurrent", q.concurrent.to_string()),
            ("max_groups", q.max_groups.to_string()),
            ("answer_cache_mb", q.answer_cache_mb.to_string()),
            ("plan_cache_mb", q.plan_cache_mb.to_string()),
            (
                "record_key_file",
                format!("\"{}\"", q.record_key_file.display()),
            ),
        ];
        for (key, value) in expect {
            assert!(
                text.contains(&format!("\n{key} = {value}\n")),
                "the example states {key} = {value}"
            );
        }
        // Every key the configuration has is in the example (written or commented out).
        let every = serde_json::to_value(&cfg).expect("json");
        for (section, keys) in every.as_object().expect("object") {
            let names: Vec<String> = match keys.as_object() {
                Some(o) => o.keys().map(|k| k.to_owned()).collect(),
                None => vec![section.clone()],
            };
            for k in names {
                assert!(
                    text.contains(&format!("\n{k} = ")) || text.contains(&format!("\n# {k} = ")),
                    "{section}.{k} is not in the example"
                );
            }
        }
    }
}
