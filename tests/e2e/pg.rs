//! The Postgres wire door with real clients: psql (`postgresql-client`), psycopg 3 and
//! the PostgreSQL ODBC driver through pyodbc (Excel's path). `.ci/run` installs them; a
//! machine without them fails these tests rather than skipping them.

use std::process::Command;

use concordat_e2e::*;

use super::fixtures::{self, ask, loaded, refusal};

const PG: (&str, &str) = ("CONCORDAT_PG__ADDR", "127.0.0.1:0");

fn pg_addr(server: &Server) -> (String, String) {
    let addr = server.pg.clone().expect("the Postgres door's address");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    (host.to_owned(), port.to_owned())
}

/// What psql printed (unaligned, tuples only, `|` between fields) and its stderr.
struct Psql {
    ok: bool,
    out: String,
    err: String,
}

fn psql(server: &Server, password: &str, database: &str, commands: &[&str]) -> Psql {
    let (host, port) = pg_addr(server);
    let mut cmd = Command::new("psql");
    cmd.arg(format!(
        "host={host} port={port} dbname={database} user=analyst sslmode=disable connect_timeout=20"
    ))
    .args(["-X", "-w", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=0"])
    .env("PGPASSWORD", password)
    .env_remove("PGSERVICE");
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .output()
        .expect("psql runs (Debian postgresql-client; .ci/run installs it)");
    Psql {
        ok: out.status.success(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a Python script with `ADDR_HOST`, `ADDR_PORT`, `TOKEN` and `DB` set; its stdout
/// parsed as JSON.
fn python(server: &Server, token: &str, database: &str, script: &str) -> serde_json::Value {
    let (host, port) = pg_addr(server);
    fixtures::python(
        script,
        &[
            ("PG_HOST", &host),
            ("PG_PORT", &port),
            ("TOKEN", token),
            ("DB", database),
        ],
    )
}

/// The rows of an HTTP JSON answer as text, in psql's unaligned form.
fn http_rows(server: &Server, token: &str, purpose: &str, sql: &str) -> (u16, Vec<String>) {
    let (status, body) = ask(server, token, purpose, sql);
    let rows = body["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|c| match c {
                                    serde_json::Value::String(s) => s.clone(),
                                    serde_json::Value::Null => String::new(),
                                    v => v.to_string(),
                                })
                                .collect::<Vec<_>>()
                                .join("|")
                        })
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    (status, rows)
}

/// Rows a script printed as lists of text, in psql's unaligned form.
fn text_rows(rows: &serde_json::Value) -> Vec<String> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|c| c.as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn personal_token(site: &Site, partner: &str, roles: &str, purposes: &[&str]) -> String {
    let mut cmd = Command::new(binary());
    cmd.args(["token", "create", "--config"])
        .arg(site.config())
        .args(["--partner", partner, "--role", roles, "--days", "2"]);
    for p in purposes {
        cmd.args(["--purpose", p]);
    }
    let out = cmd.output().expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("cct_"))
        .expect("a cct_ token")
        .to_owned()
}

#[test]
fn psql_logs_in_with_a_jwt_or_a_personal_token_and_nothing_else() {
    let site = Site::new();
    let server = site.serve_with(&[PG]);
    let jwt = site.token("pcc-kent", "analyst");
    let pat = personal_token(&site, "pcc-kent", "analyst", &[]);
    for password in [&jwt, &pat] {
        let r = psql(
            &server,
            password,
            "performance-scrutiny",
            &["SELECT 41 + 1"],
        );
        assert!(r.ok && r.out.trim() == "42", "{} {}", r.out, r.err);
    }
    let r = psql(
        &server,
        "not-a-token",
        "performance-scrutiny",
        &["SELECT 1"],
    );
    assert!(
        !r.ok && r.err.contains("password authentication failed"),
        "{}",
        r.err
    );
    let forged = format!("{}x", &pat[..pat.len() - 1]);
    let r = psql(&server, &forged, "performance-scrutiny", &["SELECT 1"]);
    assert!(
        !r.ok && r.err.contains("password authentication failed"),
        "{}",
        r.err
    );
    let r = psql(&server, &jwt, "everything", &["SELECT 1"]);
    assert!(
        !r.ok && r.err.contains("the database name is the purpose"),
        "{}",
        r.err
    );
    // A token scoped to one purpose cannot open another.
    let narrow = personal_token(&site, "pcc-kent", "analyst", &["reducing-reoffending"]);
    let r = psql(&server, &narrow, "performance-scrutiny", &["SELECT 1"]);
    assert!(!r.ok && r.err.contains("may not be used"), "{}", r.err);
    let r = psql(&server, &narrow, "reducing-reoffending", &["SELECT 1"]);
    assert!(r.ok, "{}", r.err);
    // A revoked token stops working at once.
    let id = pat
        .trim_start_matches("cct_")
        .split('_')
        .next()
        .expect("id");
    let out = Command::new(binary())
        .args(["token", "revoke", "--config"])
        .arg(site.config())
        .arg(id)
        .output()
        .expect("revoke");
    assert!(out.status.success());
    let r = psql(&server, &pat, "performance-scrutiny", &["SELECT 1"]);
    assert!(!r.ok, "a revoked token logged in");
}

#[test]
fn the_catalog_a_client_sees_holds_only_the_callers_datasets_and_columns() {
    let site = Site::with_agreement(
        "test-court-without-ids.toml",
        "title = \"t\"\npurposes = [\"inspection\"]\nproviders = { partners = [\"cps\"] }\nrecipients = { partners = [\"home-office\"] }\n[read.court_timeliness]\naccess = \"record\"\nscope = \"all\"\nhidden = [\"person_id\", \"case_id\"]\n",
    );
    let server = site.serve_with(&[PG]);
    let kent = site.token("pcc-kent", "analyst");
    let catalog = [
        "\\dt",
        "SELECT relname FROM pg_catalog.pg_class ORDER BY 1",
        "SELECT table_name, column_name FROM information_schema.columns ORDER BY 1, 2",
    ];
    // Reoffending data is Kent's only for reducing reoffending: under another purpose its
    // name appears nowhere a client can look.
    let scrutiny = psql(&server, &kent, "performance-scrutiny", &catalog);
    let reducing = psql(&server, &kent, "reducing-reoffending", &catalog);
    assert!(
        scrutiny.ok && reducing.ok,
        "{} {}",
        scrutiny.err,
        reducing.err
    );
    assert!(
        !scrutiny.out.contains("reoffending_cohort"),
        "{}",
        scrutiny.out
    );
    assert!(
        reducing.out.contains("reoffending_cohort"),
        "{}",
        reducing.out
    );
    for hidden in ["audit_log", "most_similar_groups_private"] {
        assert!(!scrutiny.out.contains(hidden), "{hidden}: {}", scrutiny.out);
    }
    // What Npgsql (Power BI) asks when it loads types: function columns join pg_proc by
    // object id, and types resolve to their namespace.
    let types = psql(
        &server,
        &kent,
        "performance-scrutiny",
        &[
            "SELECT ns.nspname, typ.typname, CASE WHEN proc.proname = 'array_recv' THEN 'a' ELSE typ.typtype END AS typtype \
           FROM pg_type AS typ JOIN pg_namespace AS ns ON ns.oid = typ.typnamespace \
           LEFT JOIN pg_proc AS proc ON proc.oid = typ.typreceive \
           LEFT JOIN pg_range ON pg_range.rngtypid = typ.oid \
           WHERE typ.typname IN ('int4', '_int4', 'text') ORDER BY typ.typname",
        ],
    );
    assert!(types.ok && types.err.is_empty(), "{}", types.err);
    assert_eq!(
        lines(&types.out),
        [
            "pg_catalog|_int4|a",
            "pg_catalog|int4|b",
            "pg_catalog|text|b"
        ]
    );
    // \dt lists exactly the tables a query can name under the purpose.
    let listed: Vec<String> = lines(&psql(&server, &kent, "performance-scrutiny", &["\\dt"]).out)
        .iter()
        .filter_map(|l| l.split('|').nth(1).map(str::to_owned))
        .collect();
    assert!(
        listed.contains(&"force_performance".to_owned()),
        "{listed:?}"
    );
    for table in &listed {
        let (status, _) = http_rows(
            &server,
            &kent,
            "performance-scrutiny",
            &format!("SELECT count(*) FROM {table}"),
        );
        assert!(status == 200, "{table} is listed but cannot be queried");
    }

    // Hidden columns are not in \d, information_schema or pg_attribute; the columns
    // shown are those a query returns.
    let home = site.token("home-office", "analyst");
    let d = psql(
        &server,
        &home,
        "inspection",
        &[
            "\\d court_timeliness",
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'court_timeliness'",
            "SELECT attname FROM pg_catalog.pg_attribute",
        ],
    );
    assert!(d.ok, "{}", d.err);
    for hidden in ["person_id", "case_id"] {
        assert!(!d.out.contains(hidden), "{hidden} shown: {}", d.out);
    }
    let (status, body) = ask(
        &server,
        &home,
        "inspection",
        "SELECT * FROM court_timeliness",
    );
    assert_eq!(status, 200, "{body}");
    let http_columns: Vec<String> = body["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            c["name"]
                .as_str()
                .or(c.as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let described: Vec<String> =
        lines(&psql(&server, &home, "inspection", &["\\d court_timeliness"]).out)
            .iter()
            .filter_map(|l| l.split('|').next().map(str::to_owned))
            .collect();
    assert_eq!(described, http_columns);
}

#[test]
fn answers_through_postgres_are_the_answers_over_http_and_each_is_audited_once() {
    let site = Site::new();
    let server = loaded(&site, &[PG]);
    let kent = site.token("pcc-kent", "analyst");
    let cases = [
        // Scope: Kent's analyst sees Kent's rows only, whatever the query.
        (
            "performance-scrutiny",
            "SELECT DISTINCT pfa_code FROM force_performance ORDER BY 1",
        ),
        (
            "performance-scrutiny",
            "SELECT quarter, indicator, value FROM force_performance ORDER BY quarter, indicator LIMIT 50",
        ),
        // Aggregate-only data: the same withheld, rounded and perturbed cells.
        (
            "reducing-reoffending",
            "SELECT age_band, count(*) AS n, avg(CASE WHEN reoffended THEN 100.0 ELSE 0 END) AS pct FROM reoffending_cohort GROUP BY age_band ORDER BY age_band",
        ),
        (
            "reducing-reoffending",
            "SELECT sex, count(*) AS n, sum(reoffences) AS reoffences FROM reoffending_cohort WHERE age_band = '18-20' GROUP BY sex ORDER BY sex",
        ),
    ];
    for (purpose, sql) in cases {
        let (status, over_http) = http_rows(&server, &kent, purpose, sql);
        assert_eq!(status, 200, "{sql}");
        let r = psql(&server, &kent, purpose, &[sql]);
        assert!(r.ok, "{sql}: {}", r.err);
        let over_pg = lines(&r.out);
        assert_eq!(normalise(&over_pg), normalise(&over_http), "{sql}");
        assert!(!over_pg.is_empty(), "{sql}");
    }
    let (_, distinct) = http_rows(&server, &kent, "performance-scrutiny", cases[0].1);
    assert_eq!(distinct.len(), 1, "Kent sees one force: {distinct:?}");

    // One audit event per question, naming the door.
    let (status, trail) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?limit=1000",
    );
    assert_eq!(status, 200, "{trail}");
    let events = trail["events"].as_array().expect("events");
    for (_, sql) in cases {
        let by_door = |door: Option<&str>| {
            events
                .iter()
                .filter(|e| e["sql"] == sql && e["door"].as_str() == door)
                .count()
        };
        assert_eq!(by_door(Some("pg")), 1, "{sql}");
        // The same question over HTTP: two asks in the loop above and one more.
        assert!(by_door(None) >= 1, "{sql}");
    }
}

/// Numbers as both sides print them (`12.5` and `12.50` are one value).
fn normalise(rows: &[String]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            r.split('|')
                .map(|c| match (c, c.parse::<f64>()) {
                    (_, Ok(v)) => format!("{v:.6}"),
                    // Postgres prints booleans as t and f.
                    ("t", _) => "true".to_owned(),
                    ("f", _) => "false".to_owned(),
                    (c, _) => c.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[test]
fn what_clients_send_on_their_own_is_accepted_and_engine_or_write_statements_are_refused() {
    let site = Site::new();
    let server = site.serve_with(&[PG]);
    let kent = site.token("pcc-kent", "analyst");
    let db = "performance-scrutiny";
    let r = psql(
        &server,
        &kent,
        db,
        &[
            "SET DateStyle = 'ISO'",
            "SET extra_float_digits = 3",
            "SET client_encoding TO 'UTF8'",
            "SET application_name = 'PowerBI'",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SHOW transaction_isolation",
            "BEGIN",
            "SELECT 1",
            "COMMIT",
            "DISCARD ALL",
            "SELECT version()",
            "SELECT current_database(), current_schema()",
        ],
    );
    assert!(r.ok && !r.err.contains("ERROR"), "{}", r.err);
    assert!(r.out.contains("read committed"), "{}", r.out);
    assert!(r.out.contains("performance-scrutiny|public"), "{}", r.out);
    for sql in [
        "SET datafusion.execution.batch_size = 1",
        "COPY force_performance TO STDOUT",
        "COPY (SELECT 1) TO STDOUT",
        "COPY force_performance FROM STDIN",
        "COPY force_performance TO '/tmp/out.csv'",
        "CREATE TABLE x (a int)",
        "DROP TABLE force_performance",
        "INSERT INTO force_performance VALUES ('E23000032')",
        "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let r = psql(&server, &kent, db, &[sql]);
        let expected = refusal(&server, &kent, db, sql);
        assert!(!expected.is_empty(), "{sql}");
        assert!(
            r.err.contains(&format!("ERROR:  {expected}")),
            "{sql}: pg said {:?}, HTTP said {expected:?}",
            r.err
        );
    }
}

const PSYCOPG: &str = r#"
import json, os, psycopg
conn = psycopg.connect(host=os.environ["PG_HOST"], port=os.environ["PG_PORT"], dbname=os.environ["DB"],
                       user="analyst", password=os.environ["TOKEN"], sslmode="disable", autocommit=True)
out = {}
cur = conn.execute("SELECT quarter, indicator, value FROM force_performance WHERE indicator = %s AND value >= %s ORDER BY quarter, indicator, value",
                   ("knife_offences", 0))
out["rows"] = [[str(c) for c in r] for r in cur.fetchall()]
out["columns"] = [d.name for d in cur.description]
cur = conn.execute("SELECT count(*) FROM force_performance WHERE quarter > %s", ("2020Q1",), prepare=True)
out["count"] = cur.fetchone()[0]
cur = conn.execute("SELECT count(*) FROM force_performance WHERE quarter > %s", ("2020Q1",), prepare=True)
out["again"] = cur.fetchone()[0]
try:
    conn.execute("SELECT * FROM reoffending_cohort WHERE age_band = %s", ("18-20",))
    out["refused"] = None
except psycopg.Error as e:
    out["refused"] = e.diag.message_primary
print(json.dumps(out))
"#;

#[test]
fn psycopg_runs_parameterised_queries_over_the_extended_protocol() {
    let site = Site::new();
    let server = loaded(&site, &[PG]);
    let kent = site.token("pcc-kent", "analyst");
    let got = python(&server, &kent, "performance-scrutiny", PSYCOPG);
    let (status, expected) = http_rows(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT quarter, indicator, value FROM force_performance WHERE indicator = 'knife_offences' AND value >= 0 ORDER BY quarter, indicator, value",
    );
    assert_eq!(status, 200);
    let rows = text_rows(&got["rows"]);
    assert!(!rows.is_empty());
    assert_eq!(normalise(&rows), normalise(&expected));
    assert_eq!(
        got["columns"],
        serde_json::json!(["quarter", "indicator", "value"])
    );
    let (_, count) = http_rows(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT count(*) FROM force_performance WHERE quarter > '2020Q1'",
    );
    assert_eq!(got["count"].to_string(), count[0]);
    assert_eq!(got["again"], got["count"]);
    // A dataset not granted for the purpose is unknown, as over HTTP.
    let expected = refusal(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT * FROM reoffending_cohort WHERE age_band = '18-20'",
    );
    assert_eq!(got["refused"].as_str(), Some(expected.as_str()));
}

const ODBC: &str = r#"
import json, os, pyodbc
conn = pyodbc.connect(
    "Driver={PostgreSQL Unicode};Server=%s;Port=%s;Database=%s;Uid=analyst;Pwd=%s;SSLmode=disable"
    % (os.environ["PG_HOST"], os.environ["PG_PORT"], os.environ["DB"], os.environ["TOKEN"]),
    autocommit=True)
cur = conn.cursor()
cur.execute("SELECT pfa_code, count(*) AS n FROM force_performance GROUP BY pfa_code ORDER BY pfa_code")
rows = [[str(c) for c in r] for r in cur.fetchall()]
tables = sorted(t.table_name for t in cur.tables(tableType="TABLE"))
print(json.dumps({"rows": rows, "tables": tables}))
"#;

#[test]
fn excel_s_path_through_the_odbc_driver_answers_a_query() {
    let site = Site::new();
    let server = loaded(&site, &[PG]);
    let kent = site.token("pcc-kent", "analyst");
    let got = python(&server, &kent, "performance-scrutiny", ODBC);
    let (_, expected) = http_rows(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT pfa_code, count(*) AS n FROM force_performance GROUP BY pfa_code ORDER BY pfa_code",
    );
    let rows = text_rows(&got["rows"]);
    assert_eq!(rows, expected);
    assert_eq!(rows.len(), 1, "Kent only");
    let tables = got["tables"].as_array().expect("tables");
    assert!(
        tables.iter().any(|t| t == "force_performance"),
        "{tables:?}"
    );
    assert!(
        !tables.iter().any(|t| t == "reoffending_cohort"),
        "{tables:?}"
    );
}

const CANCEL: &str = r#"
import json, os, threading, time, psycopg
conn = psycopg.connect(host=os.environ["PG_HOST"], port=os.environ["PG_PORT"], dbname=os.environ["DB"],
                       user="analyst", password=os.environ["TOKEN"], sslmode="disable", autocommit=True)
sql = os.environ["SQL"]
timer = threading.Timer(1.0, conn.cancel)
timer.start()
started = time.time()
out = {}
try:
    conn.execute(sql).fetchall()
    out["answered"] = True
except psycopg.errors.QueryCanceled as e:
    out["cancelled"] = e.diag.sqlstate
out["seconds"] = time.time() - started
out["after"] = conn.execute("SELECT 1").fetchone()[0]
print(json.dumps(out))
"#;

#[test]
fn a_cancel_request_stops_the_query_and_the_trail_says_so() {
    let site = Site::new();
    let server = loaded(&site, &[PG]);
    let kent = site.token("pcc-kent", "analyst");
    // Billions of joined rows: far longer than the second before the cancel.
    let sql = "SELECT count(*) FROM force_performance a JOIN force_performance b ON a.pfa_code = b.pfa_code JOIN force_performance c ON b.pfa_code = c.pfa_code JOIN force_performance d ON c.pfa_code = d.pfa_code";
    let script = CANCEL.replace("os.environ[\"SQL\"]", &format!("{sql:?}"));
    let got = python(&server, &kent, "performance-scrutiny", &script);
    assert_eq!(got["cancelled"], "57014", "{got}");
    assert!(got["seconds"].as_f64().is_some_and(|s| s < 10.0), "{got}");
    assert_eq!(got["after"], 1, "the connection is usable after a cancel");
    let (_, trail) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?limit=1000",
    );
    let events: Vec<&serde_json::Value> = trail["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["sql"] == sql)
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["outcome"], "cancelled", "{:?}", events[0]);
    assert_eq!(events[0]["door"], "pg");
}

/// DBeaver's path: pgjdbc's metadata calls (its own `pg_catalog` queries) and a prepared
/// statement with a parameter.
const JDBC: &str = r#"import java.sql.*;
public class Jdbc {
    public static void main(String[] a) throws Exception {
        String url = "jdbc:postgresql://" + System.getenv("PG") + "/" + System.getenv("DB") + "?sslmode=disable";
        try (Connection c = DriverManager.getConnection(url, "analyst", System.getenv("TOKEN"))) {
            DatabaseMetaData md = c.getMetaData();
            StringBuilder tables = new StringBuilder();
            try (ResultSet rs = md.getTables(null, null, "%", new String[]{"TABLE"})) {
                while (rs.next()) tables.append(rs.getString("TABLE_NAME")).append(",");
            }
            StringBuilder cols = new StringBuilder();
            try (ResultSet rs = md.getColumns(null, null, "force_performance", "%")) {
                while (rs.next()) cols.append(rs.getString("COLUMN_NAME")).append(",");
            }
            long n = 0;
            try (PreparedStatement ps = c.prepareStatement("SELECT count(*) FROM force_performance WHERE quarter > ?")) {
                ps.setString(1, "2020Q1");
                try (ResultSet rs = ps.executeQuery()) { rs.next(); n = rs.getLong(1); }
            }
            System.out.println("{\"tables\":\"" + tables + "\",\"columns\":\"" + cols + "\",\"count\":" + n + "}");
        }
    }
}
"#;

#[test]
fn dbeaver_s_path_through_jdbc_lists_tables_and_runs_a_prepared_query() {
    let site = Site::new();
    let server = loaded(&site, &[PG]);
    let kent = site.token("pcc-kent", "analyst");
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("Jdbc.java");
    std::fs::write(&source, JDBC).expect("source");
    let out = Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(&source)
        .env("PG", server.pg.clone().expect("pg"))
        .env("DB", "performance-scrutiny")
        .env("TOKEN", &kent)
        .output()
        .expect("java runs (Debian default-jre-headless and libpostgresql-jdbc-java)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let tables = got["tables"].as_str().expect("tables");
    assert!(tables.contains("force_performance,"), "{tables}");
    assert!(!tables.contains("reoffending_cohort"), "{tables}");
    assert_eq!(
        got["columns"],
        "pfa_code,quarter,measure,indicator,value,baseline_value,"
    );
    let (_, rows) = http_rows(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT count(*) FROM force_performance WHERE quarter > '2020Q1'",
    );
    assert_eq!(got["count"].to_string(), rows[0]);
    assert!(got["count"].as_u64().is_some_and(|n| n > 0), "{got}");
}

#[test]
fn beyond_loopback_the_door_takes_only_tls() {
    let site = Site::new();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate");
    let (cert, key) = (
        site.dir.path().join("pg.crt"),
        site.dir.path().join("pg.key"),
    );
    std::fs::write(&cert, made.cert.pem()).expect("cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("key");
    let server = site.serve_with(&[
        ("CONCORDAT_PG__ADDR", "0.0.0.0:0"),
        ("CONCORDAT_PG__TLS_CERT", cert.to_str().expect("path")),
        ("CONCORDAT_PG__TLS_KEY", key.to_str().expect("path")),
    ]);
    let (_, port) = pg_addr(&server);
    let kent = site.token("pcc-kent", "analyst");
    let connect = |sslmode: &str| {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} dbname=performance-scrutiny user=analyst sslmode={sslmode} connect_timeout=20"
            ))
            .args(["-X", "-w", "-A", "-t", "-c", "\\conninfo", "-c", "SELECT 7"])
            .env("PGPASSWORD", &kent)
            .output()
            .expect("psql")
    };
    let plain = connect("disable");
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("only TLS connections"),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let secure = connect("require");
    let said = String::from_utf8_lossy(&secure.stdout);
    assert!(
        secure.status.success(),
        "{}",
        String::from_utf8_lossy(&secure.stderr)
    );
    assert!(
        said.contains("SSL connection") && said.trim_end().ends_with('7'),
        "{said}"
    );
}
