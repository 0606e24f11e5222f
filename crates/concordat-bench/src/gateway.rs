//! The systems the benchmark drives: the gateway as a separate `concordat serve`
//! process (over HTTP, and over Postgres wire and Flight SQL through the Python clients
//! analysts use), and DuckDB through a Python worker.

use super::*;

pub(crate) struct Gateway {
    pub(crate) site: Site,
    pub(crate) server: Server,
    pub(crate) client: reqwest::Client,
    pub(crate) tokens: BTreeMap<String, String>,
}

impl Gateway {
    /// Waits (up to ten minutes) until `force_efficiency` is rebuilt from the latest
    /// version of `input`; returns how long that took.
    pub(crate) async fn efficiency_after(&mut self, input: &str, version: u64) -> Option<f64> {
        let token = self.token("hmicfrs", "inspector");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(600) {
            let body: serde_json::Value = self
                .client
                .get(format!("{}/v1/datasets/force_efficiency", self.server.url))
                .bearer_auth(token.clone())
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            if body["versions"][0]["sources"][input]
                .as_u64()
                .is_some_and(|v| v >= version)
            {
                return Some(started.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    pub(crate) fn token(&mut self, partner: &str, role: &str) -> String {
        let key = format!("{partner}/{role}");
        if let Some(t) = self.tokens.get(&key) {
            return t.clone();
        }
        let t = self.site.token(partner, role);
        self.tokens.insert(key, t.clone());
        t
    }

    pub(crate) async fn upload(
        &mut self,
        partner: &str,
        dataset: &str,
        path: &Path,
    ) -> anyhow::Result<(u64, u64)> {
        let token = self.token(partner, "uploader");
        // Read as it is sent, in 1 MiB chunks, as `concordat upload` sends a file.
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
        let resp = self
            .client
            .post(format!(
                "{}/v1/datasets/{dataset}/uploads?mode=replace_periods",
                self.server.url
            ))
            .bearer_auth(token)
            .header("content-type", "application/vnd.apache.parquet")
            .header("content-length", len)
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("{partner} uploading {dataset}: {status} {body}");
        }
        Ok((
            body["version"].as_u64().unwrap_or(0),
            body["rows"].as_u64().unwrap_or(0),
        ))
    }

    /// Runs one query; returns its wall time and rows.
    pub(crate) async fn query(
        client: &reqwest::Client,
        url: &str,
        token: &str,
        purpose: &str,
        sql: &str,
        fresh: bool,
    ) -> anyhow::Result<(Duration, usize)> {
        let started = Instant::now();
        let resp = client
            .post(format!("{url}/v1/query"))
            .bearer_auth(token)
            .header("accept", "application/vnd.apache.arrow.stream")
            // The cold path computes every answer; the warm path may reuse a kept one.
            .header(
                "cache-control",
                if fresh { "no-cache" } else { "max-age=0" },
            )
            .json(&serde_json::json!({"sql": sql, "purpose": purpose}))
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let elapsed = started.elapsed();
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        let mut rows = 0;
        for b in reader {
            rows += b?.num_rows();
        }
        Ok((elapsed, rows))
    }
}

/// Starts the process's peak RSS again from its current RSS (Linux `clear_refs`), so
/// that the next reading is the peak of what follows.
pub(crate) fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

pub(crate) fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

/// The process's resident memory now.
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub(crate) fn decode_only(path: &Path) -> anyhow::Result<(Duration, usize)> {
    let started = Instant::now();
    let file = std::fs::File::open(path)?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(8192)
        .build()?;
    let mut rows = 0;
    for b in reader {
        rows += b?.num_rows();
    }
    Ok((started.elapsed(), rows))
}

/// A DuckDB process that runs one query per line and answers with its time.
pub(crate) const DUCKDB_WORKER: &str = r#"
import json, sys, time
import duckdb
con = duckdb.connect()
con.execute("SET threads TO 2")
con.execute("SET enable_progress_bar = false")  # it would print between the answers
for name, path in json.loads(sys.argv[1]).items():
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
print(json.dumps({"ready": duckdb.__version__}), flush=True)
for line in sys.stdin:
    sql = json.loads(line)["sql"]
    t = time.perf_counter()
    try:
        rows = len(con.execute(sql).fetchall())
        print(json.dumps({"ms": (time.perf_counter() - t) * 1000, "rows": rows}), flush=True)
    except Exception as e:
        print(json.dumps({"error": str(e)}), flush=True)
"#;

/// The analysts' own clients through the other doors: psycopg over Postgres wire (text
/// rows, as psql and Power BI read them) and ADBC over Flight SQL (Arrow, as pandas
/// reads it). One connection per caller and purpose is kept, as a tool would; the time is
/// the client's, from sending the SQL to holding every row.
pub(crate) const DOORS_WORKER: &str = r#"
import json, sys, time
import psycopg
import adbc_driver_flightsql.dbapi as flight
pg_addr, flight_addr = sys.argv[1], sys.argv[2]
host, port = pg_addr.rsplit(":", 1)
conns = {}
def conn(door, token, purpose):
    key = (door, token, purpose)
    if key not in conns:
        if door == "pg":
            conns[key] = psycopg.connect(host=host, port=port, dbname=purpose, user="bench",
                                         password=token, sslmode="disable", autocommit=True)
        else:
            conns[key] = flight.connect("grpc://" + flight_addr, db_kwargs={
                "adbc.flight.sql.authorization_header": "Bearer " + token,
                "adbc.flight.sql.rpc.call_header.concordat-purpose": purpose})
    return conns[key]
print(json.dumps({"ready": psycopg.__version__}), flush=True)
for line in sys.stdin:
    q = json.loads(line)
    try:
        c = conn(q["door"], q["token"], q["purpose"])
        t = time.perf_counter()
        if q["door"] == "pg":
            rows = len(c.execute(q["sql"]).fetchall())
        else:
            cur = c.cursor()
            cur.execute(q["sql"])
            rows = cur.fetch_arrow_table().num_rows
            cur.close()
        print(json.dumps({"ms": (time.perf_counter() - t) * 1000, "rows": rows}), flush=True)
    except Exception as e:
        print(json.dumps({"error": str(e)[:300]}), flush=True)
"#;

/// A Python process answering one JSON line per JSON line: DuckDB on the files, or the
/// analysts' clients through the other doors. Its answer carries `ms` and `rows`, or
/// `error`.
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    /// Starts `script` with `args`; `None` when Python or the script's libraries are
    /// missing. Returns the worker and what its first line said it is (`ready`).
    pub(crate) fn start(script: &str, args: &[String]) -> Option<(Worker, String)> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let mut stdout = BufReader::new(child.stdout.take()?);
        let mut line = String::new();
        stdout.read_line(&mut line).ok()?;
        let ready: serde_json::Value = serde_json::from_str(&line).ok()?;
        let version = ready["ready"].as_str()?.to_owned();
        Some((
            Worker {
                child,
                stdin,
                stdout,
            },
            version,
        ))
    }

    /// Sends one request; the time and rows it reports.
    pub(crate) fn run(&mut self, ask: &serde_json::Value) -> anyhow::Result<(Duration, usize)> {
        writeln!(self.stdin, "{ask}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if let Some(e) = v["error"].as_str() {
            bail!("{e}");
        }
        let ms = v["ms"].as_f64().ok_or_else(|| anyhow!("no time"))?;
        Ok((
            Duration::from_secs_f64(ms / 1000.0),
            v["rows"].as_u64().unwrap_or(0) as usize,
        ))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DuckDB over the benchmark's files, with views named as the gateway's tables.
pub(crate) fn duckdb(tables: &BTreeMap<String, PathBuf>) -> Option<(Worker, String)> {
    let map: BTreeMap<&String, String> = tables
        .iter()
        .map(|(k, v)| (k, v.display().to_string()))
        .collect();
    Worker::start(DUCKDB_WORKER, &[serde_json::to_string(&map).ok()?])
}
