//! The Arrow Flight SQL door with real clients: the ADBC Flight SQL driver to pandas and
//! pyarrow (`adbc-driver-flightsql`), and pyarrow's own Flight client for what ADBC does
//! not expose (tickets). `.ci/run` installs them; a machine without them fails these
//! tests rather than skipping them.

use concordat_e2e::*;

use super::fixtures::{self, ask, cell, loaded, refusal};

const DOORS: [(&str, &str); 1] = [("CONCORDAT_FLIGHT__ADDR", "127.0.0.1:0")];

/// Runs a Python script with `FLIGHT` (`host:port`) and the given variables; its stdout
/// parsed as JSON.
fn python(server: &Server, vars: &[(&str, &str)], script: &str) -> serde_json::Value {
    let at = server.flight.clone().expect("the Flight SQL door");
    let mut all = vec![("FLIGHT", at.as_str())];
    all.extend_from_slice(vars);
    fixtures::python(script, &all)
}

/// The rows of an HTTP JSON answer, each cell as text.
fn http_rows(server: &Server, token: &str, purpose: &str, sql: &str) -> Vec<Vec<String>> {
    let (status, body) = ask(server, token, purpose, sql);
    assert_eq!(status, 200, "{sql}: {body}");
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r.as_array().expect("row").iter().map(cell).collect())
        .collect()
}

fn rows_of(v: &serde_json::Value) -> Vec<Vec<String>> {
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| r.as_array().expect("row").iter().map(cell).collect())
        .collect()
}

const ADBC: &str = r#"
import json, os, sys
import adbc_driver_flightsql.dbapi as flight
queries = json.loads(os.environ["QUERIES"])
def connect(purpose):
    return flight.connect("grpc://" + os.environ["FLIGHT"], db_kwargs={
        "adbc.flight.sql.authorization_header": "Bearer " + os.environ["TOKEN"],
        "adbc.flight.sql.rpc.call_header.concordat-purpose": purpose})
out = {"answers": [], "objects": {}}
for purpose, sql in queries:
    with connect(purpose) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        table = cur.fetch_arrow_table()
        out["answers"].append([[v for v in row.values()] for row in table.to_pylist()])
        cur.close()
# A prepared statement, as clients that insist on them use it.
with connect("performance-scrutiny") as conn:
    cur = conn.cursor()
    cur.adbc_prepare("SELECT count(*) AS n FROM force_performance")
    cur.execute("SELECT count(*) AS n FROM force_performance")
    out["prepared"] = cur.fetchone()[0]
    cur.close()
for purpose in ["performance-scrutiny", "reducing-reoffending"]:
    with connect(purpose) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        names = sorted(t["table_name"] for c in objects for s in (c["catalog_db_schemas"] or [])
                       for t in (s["db_schema_tables"] or []))
        out["objects"][purpose] = names
        out["schema_of_force_performance"] = [f.name for f in conn.adbc_get_table_schema("force_performance")] if purpose == "performance-scrutiny" else out.get("schema_of_force_performance")
print(json.dumps(out, default=str))
"#;

#[test]
fn adbc_gets_the_answers_http_gives_and_sees_only_granted_datasets() {
    let site = Site::new();
    let server = loaded(&site, &DOORS);
    let kent = site.token("pcc-kent", "analyst");
    let queries = [
        (
            "performance-scrutiny",
            "SELECT DISTINCT pfa_code FROM force_performance ORDER BY 1",
        ),
        (
            "performance-scrutiny",
            "SELECT quarter, indicator, value FROM force_performance ORDER BY quarter, indicator LIMIT 40",
        ),
        (
            "reducing-reoffending",
            "SELECT age_band, count(*) AS n, avg(CASE WHEN reoffended THEN 100.0 ELSE 0 END) AS pct FROM reoffending_cohort GROUP BY age_band ORDER BY age_band",
        ),
    ];
    let got = python(
        &server,
        &[
            ("TOKEN", kent.as_str()),
            (
                "QUERIES",
                &serde_json::to_string(&queries).expect("queries"),
            ),
        ],
        ADBC,
    );
    let answers = got["answers"].as_array().expect("answers");
    for ((purpose, sql), answer) in queries.iter().zip(answers) {
        let over_http = http_rows(&server, &kent, purpose, sql);
        assert!(!over_http.is_empty(), "{sql}");
        assert_eq!(rows_of(answer), over_http, "{sql}");
    }
    assert_eq!(rows_of(&answers[0]).len(), 1, "Kent sees one force");
    let count = http_rows(
        &server,
        &kent,
        "performance-scrutiny",
        "SELECT count(*) AS n FROM force_performance",
    );
    assert_eq!(cell(&got["prepared"]), count[0][0], "{got}");
    let scrutiny = &got["objects"]["performance-scrutiny"];
    let reducing = &got["objects"]["reducing-reoffending"];
    let has = |v: &serde_json::Value, t: &str| v.as_array().expect("names").iter().any(|n| n == t);
    assert!(has(scrutiny, "force_performance"), "{scrutiny}");
    assert!(!has(scrutiny, "reoffending_cohort"), "{scrutiny}");
    assert!(!has(scrutiny, "audit_log"), "{scrutiny}");
    assert!(has(reducing, "reoffending_cohort"), "{reducing}");
    assert_eq!(
        got["schema_of_force_performance"],
        serde_json::json!([
            "pfa_code",
            "quarter",
            "measure",
            "indicator",
            "value",
            "baseline_value"
        ])
    );

    // Each call is one audit event naming the door: the plans the client asked for, and
    // one run.
    let (status, trail) = get(
        &server,
        &site.token("operator", "auditor"),
        "/v1/audit?limit=1000",
    );
    assert_eq!(status, 200);
    let events = trail["events"].as_array().expect("events");
    for (_, sql) in queries {
        let count = |action: &str| {
            events
                .iter()
                .filter(|e| e["sql"] == sql && e["door"] == "flight" && e["action"] == action)
                .count()
        };
        assert!(count("describe") >= 1, "{sql}");
        assert_eq!(count("query"), 1, "{sql}");
    }
}

/// pyarrow's Flight client with a Flight SQL statement command built by hand (protobuf
/// `Any` around `CommandStatementQuery`), to hold tickets.
const TICKETS: &str = r#"
import json, os
import pyarrow.flight as fl
def varint(n):
    out = b""
    while True:
        b = n & 0x7F; n >>= 7
        if n: out += bytes([b | 0x80])
        else: return out + bytes([b])
def field(num, data): return varint(num << 3 | 2) + varint(len(data)) + data
def command(sql):
    inner = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, inner)
client = fl.FlightClient("grpc://" + os.environ["FLIGHT"])
def options(token, purpose):
    headers = []
    if token: headers.append((b"authorization", b"Bearer " + token.encode()))
    if purpose: headers.append((b"concordat-purpose", purpose.encode()))
    return fl.FlightCallOptions(headers=headers)
def attempt(f):
    try:
        return {"ok": f()}
    except Exception as e:
        return {"error": str(e)}
sql = os.environ["SQL"]
kent, essex, purpose = os.environ["KENT"], os.environ["ESSEX"], os.environ["PURPOSE"]
out = {}
info = client.get_flight_info(fl.FlightDescriptor.for_command(command(sql)), options(kent, purpose))
ticket = info.endpoints[0].ticket
reader = client.do_get(ticket, options(kent, purpose))
table = reader.read_all()
out["same_schema"] = info.schema.equals(table.schema, check_metadata=False)
out["rows"] = table.num_rows
out["other_caller"] = attempt(lambda: client.do_get(ticket, options(essex, purpose)).read_all().num_rows)
out["other_purpose"] = attempt(lambda: client.do_get(ticket, options(kent, "inspection")).read_all().num_rows)
raw = bytearray(ticket.ticket); raw[-12] ^= 1
out["tampered"] = attempt(lambda: client.do_get(fl.Ticket(bytes(raw)), options(kent, purpose)).read_all().num_rows)
out["no_token"] = attempt(lambda: client.get_flight_info(fl.FlightDescriptor.for_command(command(sql)), options(None, purpose)).schema.names)
out["no_purpose"] = attempt(lambda: client.get_flight_info(fl.FlightDescriptor.for_command(command(sql)), options(kent, None)).schema.names)
out["bad_token"] = attempt(lambda: client.get_flight_info(fl.FlightDescriptor.for_command(command(sql)), options("cct_0_0", purpose)).schema.names)
out["wrong_purpose"] = attempt(lambda: client.get_flight_info(fl.FlightDescriptor.for_command(command(sql)), options(kent, "inspection")).schema.names)
out["refused"] = attempt(lambda: client.get_flight_info(fl.FlightDescriptor.for_command(command(os.environ["REFUSED_SQL"])), options(kent, purpose)).schema.names)
token_pair = client.authenticate_basic_token(b"analyst", kent.encode())
out["handshake"] = token_pair[1].decode() == "Bearer " + kent
print(json.dumps(out))
"#;

#[test]
fn tickets_serve_only_their_caller_and_purpose_and_unauthenticated_calls_are_refused() {
    let site = Site::new();
    let server = loaded(&site, &DOORS);
    let kent = site.token("pcc-kent", "analyst");
    let essex = site.token("pcc-essex", "analyst");
    let purpose = "reducing-reoffending";
    let sql = "SELECT sex, count(*) AS n FROM reoffending_cohort GROUP BY sex ORDER BY sex";
    let refused_sql = "SELECT person_id FROM reoffending_cohort";
    let got = python(
        &server,
        &[
            ("KENT", kent.as_str()),
            ("ESSEX", essex.as_str()),
            ("PURPOSE", purpose),
            ("SQL", sql),
            ("REFUSED_SQL", refused_sql),
        ],
        TICKETS,
    );
    assert_eq!(got["same_schema"], true, "{got}");
    assert!(got["rows"].as_u64().unwrap_or(0) > 0, "{got}");
    for refused in [
        "other_caller",
        "other_purpose",
        "tampered",
        "no_token",
        "no_purpose",
        "bad_token",
        "refused",
    ] {
        assert!(
            got[refused]["error"].is_string(),
            "{refused} was answered: {}",
            got[refused]
        );
    }
    assert!(
        got["no_purpose"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("concordat-purpose")),
        "{got}"
    );
    // A refusal says what HTTP says.
    let expected = refusal(&server, &kent, purpose, refused_sql);
    assert!(!expected.is_empty());
    assert!(
        got["refused"]["error"]
            .as_str()
            .is_some_and(|e| e.contains(&expected)),
        "{got} / {expected}"
    );
    assert_eq!(got["handshake"], true, "{got}");
}
