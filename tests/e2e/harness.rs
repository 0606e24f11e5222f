//! Harness for the black-box tests: the real `concordat` binary, started on port 0 in a
//! scratch directory, and a blocking HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Uses this `concordat` binary from now on (for programs other than the tests).
pub fn set_binary(path: &Path) {
    let _ = BINARY.set(path.to_path_buf());
}

/// The `concordat` binary built alongside the tests (or `CONCORDAT_BIN`, or [`set_binary`]).
pub fn binary() -> PathBuf {
    if let Some(p) = BINARY.get() {
        return p.clone();
    }
    if let Ok(p) = std::env::var("CONCORDAT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("concordat");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}

/// The repository's `policies/`.
pub fn shipped_policies() -> PathBuf {
    repository().join("policies")
}

/// The repository root: found from the running package's directory (set by cargo at run
/// time), the directory this crate was built in, or the current directory upwards.
pub fn repository() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("CARGO_MANIFEST_DIR") {
        candidates.extend(Path::new(&dir).ancestors().map(Path::to_path_buf));
    }
    candidates.extend(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(Path::to_path_buf),
    );
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    candidates
        .into_iter()
        .find(|d| d.join("policies/partners.toml").is_file() && d.join("schemas").is_dir())
        .expect("the repository (with policies/ and schemas/) above this directory")
}

/// A scratch directory with a configuration, an HS256 development secret and policies.
pub struct Site {
    /// Scratch directory, removed on drop.
    pub dir: tempfile::TempDir,
}

impl Site {
    /// A site using the shipped policies.
    pub fn new() -> Site {
        Self::with_policies(&shipped_policies())
    }

    /// A site using a copy of these policies.
    pub fn with_policies(policies: &Path) -> Site {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("policies");
        std::fs::create_dir_all(&copy).expect("policies");
        for entry in std::fs::read_dir(policies).expect("policies dir") {
            let p = entry.expect("entry").path();
            std::fs::copy(&p, copy.join(p.file_name().expect("name"))).expect("copy");
        }
        let mut secret = [0u8; 32];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").expect("urandom"),
            &mut secret,
        )
        .expect("random");
        let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.path().join("secret"), secret).expect("secret");
        std::fs::write(
            dir.path().join("concordat.toml"),
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicies_dir = \"policies\"\n[auth]\nissuer = \"concordat-e2e\"\naudience = \"concordat\"\nalgorithms = [\"HS256\"]\ndev_secret_file = \"secret\"\n",
        )
        .expect("config");
        Site { dir }
    }

    /// Another site (its own scratch directory) sharing this one's policies, signing
    /// secret and configuration: a replica, once both point at one store.
    pub fn replica_of(other: &Site) -> Site {
        let site = Site::with_policies(&other.dir.path().join("policies"));
        for f in ["secret", "concordat.toml"] {
            std::fs::copy(other.dir.path().join(f), site.dir.path().join(f)).expect("copy");
        }
        site
    }

    /// Points the site's durable state at a shared S3-compatible store.
    pub fn use_store(&self, s3: &S3, prefix: &str) {
        let mut text = std::fs::read_to_string(self.config()).expect("config");
        text.push_str(&format!(
            "[store]\nurl = \"s3://{}/{prefix}\"\n[store.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
            s3.bucket, s3.endpoint
        ));
        std::fs::write(self.config(), text).expect("config");
    }

    /// A site using the shipped policies plus one more agreement file.
    pub fn with_agreement(file_name: &str, toml: &str) -> Site {
        let site = Site::new();
        std::fs::write(site.dir.path().join("policies").join(file_name), toml).expect("agreement");
        site
    }

    /// The configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("concordat.toml")
    }

    /// A development token from `concordat token issue`.
    pub fn token(&self, partner: &str, roles: &str) -> String {
        let out = Command::new(binary())
            .args(["token", "issue", "--config"])
            .arg(self.config())
            .args(["--partner", partner, "--role", roles])
            .output()
            .expect("token issue");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts `concordat serve` with extra environment.
    pub fn serve_with(&self, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(binary());
        // Logs go to a file: an unread pipe would fill and stall the server.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log");
        cmd.args(["serve", "--config"])
            .arg(self.config())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(url) = line.strip_prefix("concordat listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!("server did not start: {line} {log}");
        };
        // With the Postgres or Flight SQL door on, their addresses are the next lines.
        let mut door = |var: &str, prefix: &str| {
            if env.iter().any(|(k, _)| *k == var) {
                let line = lines.next().and_then(Result::ok).unwrap_or_default();
                line.strip_prefix(prefix).map(str::to_owned)
            } else {
                None
            }
        };
        let pg = door("CONCORDAT_PG__ADDR", "concordat postgres wire on ");
        let flight = door("CONCORDAT_FLIGHT__ADDR", "concordat flight sql on ");
        std::thread::spawn(move || lines.for_each(drop));
        Server {
            child,
            url: url.to_owned(),
            pg,
            flight,
            log: self.dir.path().join("server.log"),
        }
    }

    /// Starts `concordat serve`.
    pub fn serve(&self) -> Server {
        self.serve_with(&[])
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

/// A running server, killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Base URL.
    pub url: String,
    /// The Postgres door's `host:port`, when it was started.
    pub pg: Option<String>,
    /// The Flight SQL door's `host:port`, when it was started.
    pub flight: Option<String>,
    /// The server's log file.
    pub log: PathBuf,
}

impl Server {
    /// Kills the process at once (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to end by itself, up to a limit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows how the server saw it.
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            // Backtrace frames left out: the messages are what tell.
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    let t = l.trim_start();
                    !(t.starts_with("at ")
                        || t.split(':')
                            .next()
                            .is_some_and(|n| n.parse::<u32>().is_ok()))
                })
                .collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- server log (tail) ---\n{tail}");
        }
        self.kill();
    }
}

/// An S3-compatible server on loopback (`moto`'s server, which honours conditional
/// writes), with one bucket; stopped on drop.
pub struct S3 {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket made for the test.
    pub bucket: String,
}

impl S3 {
    /// Starts the server and makes the bucket.
    pub fn start() -> S3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        let s3 = S3 {
            child,
            endpoint,
            bucket: "concordat".into(),
        };
        let start = Instant::now();
        loop {
            match client()
                .put(format!("{}/{}", s3.endpoint, s3.bucket))
                .send()
            {
                Ok(r) if r.status().is_success() => break,
                _ if start.elapsed() > Duration::from_secs(30) => {
                    panic!("the S3 server did not start on {}", s3.endpoint)
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        s3
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client with a generous timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// Status and JSON body of a response.
pub fn json(resp: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// `POST /v1/datasets/{dataset}/uploads`.
pub fn upload(
    server: &Server,
    token: &str,
    dataset: &str,
    mode: &str,
    bytes: Vec<u8>,
) -> (u16, serde_json::Value) {
    json(
        client()
            .post(format!(
                "{}/v1/datasets/{dataset}/uploads?mode={mode}",
                server.url
            ))
            .bearer_auth(token)
            .header("content-type", "application/vnd.apache.parquet")
            .body(bytes)
            .send()
            .expect("upload"),
    )
}

/// `GET` a path with a token.
pub fn get(server: &Server, token: &str, path: &str) -> (u16, serde_json::Value) {
    json(
        client()
            .get(format!("{}{path}", server.url))
            .bearer_auth(token)
            .send()
            .expect("get"),
    )
}

/// Peak and current resident memory of a process (`VmHWM`, `VmRSS`), KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
