//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven by Python `selenium` with nothing downloaded), and `/v1/openapi.json` checked
//! against the router and against real answers.
//!
//! Screenshots of every page the browser test visits are kept under
//! `<target>/tmp/console-screenshots/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use concordat_e2e::*;

use super::fixtures::{ask, loaded, parquet, python};

const FORCES: [&str; 4] = ["kent", "essex", "surrey", "sussex"];

/// A server with force performance and reoffending (from `loaded`), and the inputs of the
/// efficiency dataset for four forces; returns once the efficiency dataset is built.
fn with_efficiency(site: &Site) -> Server {
    let server = loaded(site, &[]);
    let (status, body) = upload(
        &server,
        &site.token("home-office", "uploader"),
        "force_context",
        "append",
        parquet("force_context", &[], 0.01),
    );
    assert_eq!(status, 201, "{body}");
    for force in FORCES {
        let (status, body) = upload(
            &server,
            &site.token(&format!("force-{force}"), "uploader"),
            "force_resources",
            "append",
            parquet("force_resources", &[force], 0.01),
        );
        assert_eq!(status, 201, "{body}");
    }
    let inspector = site.token("hmicfrs", "inspector");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = ask(
            &server,
            &inspector,
            "inspection",
            "SELECT count(DISTINCT pfa_code) FROM force_efficiency WHERE value IS NOT NULL",
        );
        assert_eq!(status, 200, "{body}");
        if body["rows"][0][0].as_u64() >= Some(FORCES.len() as u64) {
            return server;
        }
        assert!(Instant::now() < deadline, "efficiency never built: {body}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir
}

const BROWSER: &str = r##"
import json, os, re, tempfile, time
os.environ["SE_OFFLINE"] = "true"
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ["BASE"]
SHOTS = os.environ["SHOTS"]
HIGHLIGHT = "#c0392b"
out = {}

def browser():
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1366,768", "--user-data-dir=" + tempfile.mkdtemp()]:
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)

def wait(d, fn, what, timeout=30):
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.1).until(lambda d: fn(d))
    except Exception:
        shot(d, "FAILED-" + re.sub(r"[^a-z0-9]+", "-", what.lower()))
        raise AssertionError("timed out waiting for " + what + "; page: " + d.find_element(By.TAG_NAME, "main").text[:2000])

def shot(d, name, full=False):
    if full:
        height = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(1366, min(max(height, 768), 4000))
    d.save_screenshot(os.path.join(SHOTS, name + ".png"))
    if full:
        d.set_window_size(1366, 768)

def go(d, page):
    d.get(BASE + "/console/#/" + page)

def fits(d, what):
    # Readable at 1366x768: nothing wider than the window (tables scroll in their box).
    width = d.execute_script("return document.documentElement.scrollWidth")
    inner = d.execute_script("return window.innerWidth")
    assert width <= inner, what + " is wider than the window: %d > %d" % (width, inner)

def tab_reaches(d, wanted):
    # Keyboard only: Tab from the top of the page reaches each wanted element.
    d.execute_script("if (document.activeElement) document.activeElement.blur(); window.scrollTo(0, 0);")
    seen = set()
    for _ in range(80):
        d.switch_to.active_element.send_keys(Keys.TAB)
        el = d.switch_to.active_element
        seen.add(el.get_attribute("id") or el.get_attribute("href") or el.text)
    missing = [w for w in wanted if not any(w in (s or "") for s in seen)]
    assert not missing, "not reachable by Tab: %r" % missing

def sign_in(d, token):
    d.get(BASE + "/")
    wait(d, lambda d: d.find_elements(By.ID, "token"), "the sign-in form")
    assert d.current_url.startswith(BASE + "/console/"), d.current_url
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.ID, "token").send_keys(Keys.ENTER)
    wait(d, lambda d: d.find_elements(By.ID, "agreements"), "the agreements after sign-in")

def finish(d, who, allowed):
    # Every request the page made went to this origin (or was a blob the page made).
    urls = []
    for entry in d.get_log("performance"):
        m = json.loads(entry["message"])["message"]
        if m["method"] == "Network.requestWillBeSent":
            urls.append(m["params"]["request"]["url"])
    # (The browser's own new-tab page, before the first navigation, is not the console.)
    ours = [u for u in urls if not re.match(r"(chrome|chrome-untrusted|about|devtools):", u)]
    foreign = [u for u in ours if not (u.startswith(BASE + "/") or u.startswith("blob:") or u.startswith("data:"))]
    assert not foreign, who + " requested other origins: " + repr(foreign[:5])
    assert any("/console/vendor/echarts" in u for u in urls) and any("/v1/me" in u for u in urls), urls[:20]
    # No console errors, but the network's note of each refusal the test asked for.
    errors = []
    for e in d.get_log("browser"):
        if e["level"] != "SEVERE":
            continue
        if e.get("source") == "network" and any(re.search(a, e["message"]) for a in allowed):
            continue
        errors.append(e["message"])
    assert not errors, who + " console errors: " + repr(errors)
    out[who + "_requests"] = len(urls)
    d.quit()

def cells(d, table_id):
    # Numbers are shown with thousands separators; the test compares figures.
    return [[td.text.replace(",", "") if re.fullmatch(r"[0-9,.\-]+", td.text) else td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in d.find_elements(By.CSS_SELECTOR, "#" + table_id + " tbody tr")]

def run_sql(d, purpose, sql):
    go(d, "sql")
    wait(d, lambda d: d.find_elements(By.ID, "sql"), "the SQL editor")
    Select(d.find_element(By.ID, "purpose")).select_by_value(purpose)
    box = d.find_element(By.ID, "sql")
    box.clear()
    box.send_keys(sql)
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    wait(d, lambda d: d.find_elements(By.ID, "answer") or d.find_elements(By.CSS_SELECTOR, "#result .error"), "an answer to " + sql)
    errs = d.find_elements(By.CSS_SELECTOR, "#result .error")
    return errs[0].text if errs else cells(d, "answer")

# ---- a Kent PCC analyst ----
d = browser()
d.get(BASE + "/")
wait(d, lambda d: d.find_elements(By.ID, "token"), "the sign-in form")
d.find_element(By.ID, "token").send_keys("cct_000000000000_" + "0" * 64)
d.find_element(By.CSS_SELECTOR, "#signin-form button").click()
wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#signin-form .error"), "the refusal of a bad token")
out["bad_token"] = d.find_element(By.CSS_SELECTOR, "#signin-form .error").text
assert d.execute_script("return sessionStorage.length") == 0
sign_in(d, os.environ["PCC"])
assert d.execute_script("return sessionStorage.getItem('concordat.token')") == os.environ["PCC"]
assert d.execute_script("return localStorage.length") == 0 and d.execute_script("return document.cookie") == ""
out["pcc_who"] = d.find_element(By.ID, "who-name").text
out["pcc_agreements"] = [r[0] for r in cells(d, "agreements")]
fits(d, "the Me page")
tab_reaches(d, ["#/datasets", "#/sql", "#/efficiency", "#/area", "sign-out"])
shot(d, "1-kent-pcc-me", full=True)
go(d, "datasets")
wait(d, lambda d: d.find_elements(By.ID, "why-list"), "the datasets page")
out["pcc_datasets"] = [r[0].split("\n")[0] for r in cells(d, "datasets")]
shot(d, "2-kent-pcc-datasets", full=True)
d.find_element(By.CSS_SELECTOR, "#why-list a[href='#/why/reoffending_cohort']").click()
wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-purpose]"), "the explanation")
out["pcc_why"] = {c.get_attribute("data-purpose"): c.text for c in d.find_elements(By.CSS_SELECTOR, "[data-purpose]")}
out["pcc_rows"] = run_sql(d, "performance-scrutiny", os.environ["PCC_SQL"])
fits(d, "the SQL page")
tab_reaches(d, ["purpose", "sql", "run"])
shot(d, "3-kent-pcc-sql", full=True)
out["pcc_aggregate"] = run_sql(d, "reducing-reoffending", os.environ["PCC_AGG_SQL"])
out["pcc_disclosure"] = d.find_element(By.ID, "disclosure").text
shot(d, "4-kent-pcc-sql-aggregate", full=True)
out["pcc_refused"] = run_sql(d, "performance-scrutiny", "SELECT * FROM reoffending_cohort")
go(d, "efficiency")
wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".metric svg"), "the efficiency charts")
out["pcc_efficiency_force"] = d.find_element(By.ID, "eff-force").get_attribute("value")
go(d, "area")
wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "section.card")) == 4 and len(d.find_elements(By.CSS_SELECTOR, "section.card svg")) >= 3, "the area overview")
out["pcc_area"] = {s.get_attribute("id"): s.text for s in d.find_elements(By.CSS_SELECTOR, "section.card")}
fits(d, "the area overview")
shot(d, "5-kent-pcc-area", full=True)
finish(d, "pcc", [r"/v1/me .*401", r"/v1/query .*40[034]"])

# ---- an HMICFRS inspector ----
d = browser()
sign_in(d, os.environ["INSPECTOR"])
go(d, "efficiency")
wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, ".metric svg path"), "the efficiency charts")
Select(d.find_element(By.ID, "eff-force")).select_by_value(os.environ["CHOSEN"])
wait(d, lambda d: os.environ["CHOSEN_NAME"] in d.find_element(By.ID, "eff-words").text, "the chosen force's words")
wait(d, lambda d: len([m for m in d.find_elements(By.CSS_SELECTOR, ".metric") if m.find_elements(By.CSS_SELECTOR, "svg path")]) == 9, "nine charts drawn")
charts = {}
for m in d.find_elements(By.CSS_SELECTOR, ".metric"):
    fills = [p.get_attribute("fill") for p in m.find_elements(By.CSS_SELECTOR, "svg path")]
    charts[m.get_attribute("data-metric")] = {
        "highlighted": fills.count(HIGHLIGHT),
        "bars": fills.count(HIGHLIGHT) + fills.count("#9fb3c8"),
        "text": m.text,
    }
out["charts"] = charts
out["eff_year"] = d.find_element(By.ID, "eff-year").get_attribute("value")
out["eff_sentences"] = d.find_element(By.ID, "eff-sentences").text
fits(d, "the efficiency page")
tab_reaches(d, ["eff-force", "eff-year", "eff-xlsx"])
shot(d, "6-hmicfrs-efficiency", full=True)
finish(d, "inspector", [])

# ---- a Kent Police uploader ----
d = browser()
sign_in(d, os.environ["FORCE"])
def send(path):
    go(d, "upload")
    wait(d, lambda d: d.find_elements(By.ID, "upload-file"), "the upload form")
    Select(d.find_element(By.ID, "upload-dataset")).select_by_value("force_performance")
    Select(d.find_element(By.ID, "upload-mode")).select_by_value("replace_periods")
    d.find_element(By.ID, "upload-file").send_keys(path)
    d.find_element(By.ID, "upload-send").click()
    wait(d, lambda d: d.find_elements(By.ID, "upload-done") or d.find_elements(By.ID, "violations") or d.find_elements(By.CSS_SELECTOR, "#upload-result .error"), "the upload's outcome", 120)
    bar = d.find_element(By.ID, "upload-progress")
    return {"progress": bar.get_attribute("value"), "events": bar.get_attribute("data-events"),
            "done": (d.find_elements(By.ID, "upload-done") or [None])[0] and d.find_element(By.ID, "upload-done").text,
            "violations": cells(d, "violations") if d.find_elements(By.ID, "violations") else None,
            "error": (d.find_elements(By.CSS_SELECTOR, "#upload-result .error") or [None])[0] and d.find_element(By.CSS_SELECTOR, "#upload-result .error").text}
out["upload_ok"] = send(os.environ["KENT_FILE"])
shot(d, "7-kent-force-upload", full=True)
out["upload_refused"] = send(os.environ["ESSEX_FILE"])
shot(d, "8-kent-force-upload-refused", full=True)
finish(d, "force", [r"/uploads\?mode=replace_periods .*422"])

# ---- the operator's auditor ----
d = browser()
sign_in(d, os.environ["AUDITOR"])
go(d, "audit")
wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#audit tbody tr") and d.find_elements(By.CSS_SELECTOR, "#audit-chain div"), "the audit trail")
out["chain"] = d.find_element(By.ID, "audit-chain").text
first = cells(d, "audit")
out["audit_newest_first"] = [int(r[0]) for r in first]
Select(d.find_element(By.ID, "audit-outcome")).select_by_value("refused")
d.find_element(By.ID, "audit-partner").send_keys("force-kent")
d.find_element(By.ID, "audit-apply").click()
wait(d, lambda d: all(r and "refused" in r[4] for r in cells(d, "audit")) and cells(d, "audit"), "the filtered trail")
out["audit_filtered"] = cells(d, "audit")
fits(d, "the audit page")
shot(d, "9-operator-audit", full=True)
finish(d, "auditor", [])
print(json.dumps(out))
"##;

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[test]
fn console_in_a_real_browser_shows_each_partner_what_its_agreements_allow() {
    let site = Site::new();
    let server = with_efficiency(&site);
    let pcc = site.token("pcc-kent", "analyst");
    let inspector = site.token("hmicfrs", "inspector");
    let files = tempfile::tempdir().expect("tempdir");
    let kent = files.path().join("kent.parquet");
    let essex = files.path().join("essex.parquet");
    std::fs::write(&kent, parquet("force_performance", &["kent"], 0.013)).expect("kent file");
    std::fs::write(&essex, parquet("force_performance", &["essex"], 0.013)).expect("essex file");
    let pcc_sql = "SELECT pfa_code, count(*) AS n FROM force_performance GROUP BY pfa_code";
    let agg_sql = "SELECT age_band, count(*) AS offenders FROM reoffending_cohort GROUP BY age_band ORDER BY age_band";
    let (status, by_api) = ask(&server, &pcc, "performance-scrutiny", pcc_sql);
    assert_eq!(status, 200, "{by_api}");
    let (status, agg_by_api) = ask(&server, &pcc, "reducing-reoffending", agg_sql);
    assert_eq!(status, 200, "{agg_by_api}");

    let shots = screenshots();
    let shots_text = shots.display().to_string();
    let out = python(
        BROWSER,
        &[
            ("BASE", server.url.as_str()),
            ("SHOTS", &shots_text),
            ("PCC", &pcc),
            ("PCC_SQL", pcc_sql),
            ("PCC_AGG_SQL", agg_sql),
            ("INSPECTOR", &inspector),
            ("CHOSEN", "E23000028"),
            ("CHOSEN_NAME", "Essex"),
            ("FORCE", &site.token("force-kent", "uploader")),
            ("AUDITOR", &site.token("operator", "auditor")),
            ("KENT_FILE", &kent.display().to_string()),
            ("ESSEX_FILE", &essex.display().to_string()),
        ],
    );

    // Kent's analyst: who, Kent's agreements, the same rows the API gives, and no more.
    assert!(
        out["pcc_who"].as_str().unwrap_or_default().contains("Kent"),
        "{out}"
    );
    let agreements = out["pcc_agreements"].to_string();
    for id in [
        "force-performance-pcc",
        "efficiency-pcc",
        "court-timeliness-pcc",
    ] {
        assert!(agreements.contains(id), "{id} missing: {agreements}");
    }
    assert!(!agreements.contains("hmicfrs"), "{agreements}");
    assert!(
        out["bad_token"]
            .as_str()
            .unwrap_or_default()
            .contains("unauthorized"),
        "{out}"
    );
    let rows: Vec<Vec<String>> = by_api["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            vec![
                r[0].as_str().unwrap_or_default().to_owned(),
                r[1].as_u64().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    assert_eq!(rows.len(), 1, "Kent's analyst sees Kent only: {by_api}");
    assert_eq!(out["pcc_rows"], serde_json::json!(rows), "{out}");
    // The aggregate answer: the same released figures, with the disclosure record shown.
    let released: Vec<Vec<String>> = agg_by_api["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let n = match &r[1] {
                serde_json::Value::Null => "withheld".to_owned(),
                v => v.as_u64().unwrap_or_default().to_string(),
            };
            vec![r[0].as_str().unwrap_or_default().to_owned(), n]
        })
        .collect();
    assert_eq!(out["pcc_aggregate"], serde_json::json!(released), "{out}");
    let disclosure = out["pcc_disclosure"].as_str().unwrap_or_default();
    assert!(
        disclosure.contains("Disclosure control applied")
            && disclosure.contains("Rounded")
            && disclosure.contains("Perturbed"),
        "{disclosure}"
    );
    assert!(
        out["pcc_refused"]
            .as_str()
            .unwrap_or_default()
            .contains("403"),
        "a refusal is shown as the API gives it: {out}"
    );
    assert!(
        out["pcc_why"]["reducing-reoffending"]
            .as_str()
            .unwrap_or_default()
            .contains("allowed")
            && out["pcc_why"]["inspection"]
                .as_str()
                .unwrap_or_default()
                .contains("refused"),
        "{out}"
    );
    assert_eq!(out["pcc_efficiency_force"], "E23000032", "Kent preselected");
    let area = out["pcc_area"].to_string();
    assert!(
        area.contains("Disclosure control") && area.contains("knife offences"),
        "{area}"
    );

    // The inspector's charts: every force a bar, the chosen one highlighted, its rank in
    // words as the extract gives it.
    let fy = out["eff_year"].as_str().expect("year").to_owned();
    let (status, extract) = json(
        client()
            .get(format!(
                "{}/v1/extracts/efficiency?financial_year={fy}&format=json",
                server.url
            ))
            .bearer_auth(&inspector)
            .send()
            .expect("extract"),
    );
    assert_eq!(status, 200, "{extract}");
    let cols: Vec<&str> = extract["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    let at = |name: &str| cols.iter().position(|c| *c == name).expect("column");
    let charts = out["charts"].as_object().expect("charts");
    assert_eq!(charts.len(), 9, "nine metrics: {out}");
    let mut highlighted = 0;
    for (metric, chart) in charts {
        let of_metric: Vec<&serde_json::Value> = extract["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r[at("metric")] == metric.as_str() && !r[at("value")].is_null())
            .collect();
        assert_eq!(chart["bars"], of_metric.len(), "{metric}: {chart}");
        if let Some(essex) = of_metric.iter().find(|r| r[at("pfa_code")] == "E23000028") {
            highlighted += 1;
            assert_eq!(chart["highlighted"], 1, "{metric}: {chart}");
            let rank = essex[at("rank")].as_u64().expect("rank");
            let words = format!("ranks {} of {}", ordinal(rank), of_metric.len());
            assert!(
                chart["text"].as_str().unwrap_or_default().contains(&words),
                "{metric}: {words} in {chart}"
            );
        } else {
            assert_eq!(chart["highlighted"], 0, "{metric}: {chart}");
        }
    }
    assert!(highlighted >= 5, "Essex has figures: {out}");

    // The uploader: progress, the new version; an out-of-area file: violations by column.
    let ok = &out["upload_ok"];
    assert_eq!(ok["progress"], "100", "{ok}");
    let events: u64 = ok["events"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    assert!(events >= 1, "progress events were seen: {ok}");
    assert!(
        ok["done"]
            .as_str()
            .unwrap_or_default()
            .contains("Committed as version"),
        "{ok}"
    );
    let refused = &out["upload_refused"];
    let groups = refused["violations"].as_array().expect("violations shown");
    assert!(
        groups.iter().any(|g| g[0] == "pfa_code"),
        "grouped by column: {refused}"
    );
    // Every row of Essex's file is outside Kent's scope, and every one is counted (not
    // just the violations the answer lists).
    let essex_rows: usize = concordat_synth::Synth::new(0.013, 11)
        .only(&["essex"])
        .batches("force_performance")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let scope = groups
        .iter()
        .find(|g| g[0] == "pfa_code")
        .expect("the scope group");
    assert_eq!(scope[2], essex_rows.to_string(), "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap_or_default()
            .contains("validation_failed"),
        "{refused}"
    );
    let (status, versions) = get(
        &server,
        &site.token("force-kent", "uploader"),
        "/v1/datasets/force_performance",
    );
    assert_eq!(status, 200, "{versions}");
    let done = ok["done"].as_str().unwrap_or_default();
    let latest = versions["versions"]
        .as_array()
        .and_then(|v| v.iter().filter_map(|v| v["version"].as_u64()).max())
        .expect("a version");
    assert!(
        done.contains(&format!("version {latest}")),
        "the console's version is the table's latest, and the refused file added none: {done} vs {latest}"
    );

    // The auditor: newest first, the chain verified, filters applied by the server.
    assert!(
        out["chain"]
            .as_str()
            .unwrap_or_default()
            .contains("Chain verified"),
        "{out}"
    );
    let seqs: Vec<u64> = out["audit_newest_first"]
        .as_array()
        .expect("seqs")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert!(
        seqs.len() > 10 && seqs.windows(2).all(|w| w[0] > w[1]),
        "{seqs:?}"
    );
    let filtered = out["audit_filtered"].as_array().expect("filtered");
    assert!(!filtered.is_empty(), "{out}");
    for row in filtered {
        assert_eq!(row[2], "force-kent", "{row}");
        assert!(
            row[4].as_str().unwrap_or_default().contains("refused"),
            "{row}"
        );
    }
    for name in [
        "1-kent-pcc-me",
        "6-hmicfrs-efficiency",
        "7-kent-force-upload",
    ] {
        assert!(shots.join(format!("{name}.png")).exists(), "{name}");
    }
}

const VALIDATE: &str = r##"
import json, os, sys
from jsonschema import Draft202012Validator
doc = json.load(open(os.environ["DOC"]))
answers = json.load(open(os.environ["ANSWERS"]))
failures = []
for a in answers:
    schema = {"$ref": "#/components/schemas/" + a["schema"], "components": doc["components"]}
    for e in Draft202012Validator(schema).iter_errors(a["body"]):
        failures.append(a["what"] + ": " + e.message[:300] + " at " + "/".join(map(str, e.absolute_path)))
print(json.dumps({"checked": len(answers), "failures": failures}))
"##;

#[test]
fn openapi_describes_every_route_the_router_serves_and_real_answers_match_it() {
    let site = Site::new();
    let server = loaded(&site, &[]);
    let (status, doc) = json(
        client()
            .get(format!("{}/v1/openapi.json", server.url))
            .send()
            .expect("openapi"),
    );
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{doc}"
    );
    // Every documented operation is served: without a credential it is refused as
    // unauthenticated, never "no such route" or "method not allowed".
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "{paths:?}");
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "force_performance")
            .replace("{id}", "0123456789ab");
        for method in item.as_object().expect("item").keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let resp = client()
                .request(m, format!("{}{concrete}", server.url))
                .send()
                .expect("request");
            let want = if path == "/v1/openapi.json" { 200 } else { 401 };
            assert_eq!(resp.status().as_u16(), want, "{method} {path}");
            operations += 1;
            assert!(
                item[method]["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()),
                "{method} {path} documents its answers"
            );
        }
    }
    assert!(operations >= 13, "{operations}");

    // Real answers, each checked against the schema the document gives it.
    let pcc = site.token("pcc-kent", "analyst");
    let operator = site.token("operator", "auditor");
    let force = site.token("force-kent", "uploader");
    let mut answers = Vec::new();
    let mut keep =
        |what: &str, schema: &str, (status, body): (u16, serde_json::Value), want: u16| {
            assert_eq!(status, want, "{what}: {body}");
            answers.push(serde_json::json!({"what": what, "schema": schema, "body": body}));
        };
    keep("me", "Me", get(&server, &pcc, "/v1/me"), 200);
    keep(
        "me (national)",
        "Me",
        get(&server, &operator, "/v1/me"),
        200,
    );
    keep(
        "datasets",
        "DatasetList",
        get(&server, &pcc, "/v1/datasets"),
        200,
    );
    for name in ["force_performance", "reoffending_cohort", "police_forces"] {
        keep(
            name,
            "DatasetDetail",
            get(&server, &pcc, &format!("/v1/datasets/{name}")),
            200,
        );
    }
    keep(
        "explain",
        "Explanations",
        get(&server, &pcc, "/v1/datasets/court_timeliness/explain"),
        200,
    );
    keep(
        "unknown dataset",
        "ErrorBody",
        get(&server, &pcc, "/v1/datasets/nothing_here"),
        404,
    );
    keep(
        "record answer",
        "QueryAnswer",
        ask(
            &server,
            &pcc,
            "performance-scrutiny",
            "SELECT * FROM force_performance LIMIT 5",
        ),
        200,
    );
    keep(
        "aggregate answer",
        "QueryAnswer",
        ask(
            &server,
            &pcc,
            "reducing-reoffending",
            "SELECT sex, count(*) AS n FROM reoffending_cohort GROUP BY sex",
        ),
        200,
    );
    keep(
        "refused query",
        "ErrorBody",
        ask(
            &server,
            &pcc,
            "performance-scrutiny",
            "DROP TABLE force_performance",
        ),
        400,
    );
    keep(
        "upload",
        "UploadDone",
        upload(
            &server,
            &force,
            "force_performance",
            "replace_periods",
            parquet("force_performance", &["kent"], 0.013),
        ),
        201,
    );
    keep(
        "duplicate upload",
        "UploadDone",
        upload(
            &server,
            &force,
            "force_performance",
            "replace_periods",
            parquet("force_performance", &["kent"], 0.013),
        ),
        200,
    );
    keep(
        "refused upload",
        "ErrorBody",
        upload(
            &server,
            &force,
            "force_performance",
            "append",
            parquet("force_performance", &["essex"], 0.01),
        ),
        422,
    );
    keep(
        "efficiency extract",
        "EfficiencyExtract",
        get(
            &server,
            &site.token("hmicfrs", "inspector"),
            "/v1/extracts/efficiency?financial_year=2023-24&format=json",
        ),
        200,
    );
    let minted = json(
        client()
            .post(format!("{}/v1/tokens", server.url))
            .bearer_auth(&pcc)
            .json(&serde_json::json!({"name": "schema check", "roles": ["analyst"], "days": 1}))
            .send()
            .expect("mint"),
    );
    let id = minted.1["id"].as_str().unwrap_or_default().to_owned();
    keep("token created", "TokenCreated", minted, 201);
    keep(
        "token list",
        "TokenList",
        get(&server, &pcc, "/v1/tokens"),
        200,
    );
    keep(
        "token revoked",
        "TokenInfo",
        json(
            client()
                .delete(format!("{}/v1/tokens/{id}", server.url))
                .bearer_auth(&pcc)
                .send()
                .expect("revoke"),
        ),
        200,
    );
    keep(
        "audit oldest first",
        "AuditPage",
        get(&server, &operator, "/v1/audit?limit=1000"),
        200,
    );
    keep(
        "audit newest first",
        "AuditPage",
        get(
            &server,
            &operator,
            "/v1/audit?order=newest&limit=5&outcome=refused",
        ),
        200,
    );
    keep(
        "chain",
        "ChainCheck",
        get(&server, &operator, "/v1/audit/verify"),
        200,
    );
    keep(
        "not an auditor",
        "ErrorBody",
        get(&server, &pcc, "/v1/audit"),
        403,
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let (doc_path, answers_path) = (dir.path().join("doc.json"), dir.path().join("answers.json"));
    std::fs::write(&doc_path, doc.to_string()).expect("doc");
    std::fs::write(&answers_path, serde_json::Value::Array(answers).to_string()).expect("answers");
    let checked = python(
        VALIDATE,
        &[
            ("DOC", &doc_path.display().to_string()),
            ("ANSWERS", &answers_path.display().to_string()),
        ],
    );
    assert_eq!(checked["failures"], serde_json::json!([]), "{checked}");
    assert!(checked["checked"].as_u64() >= Some(20), "{checked}");
}

#[test]
fn console_is_served_from_the_binary_under_a_strict_policy() {
    let site = Site::new();
    let server = site.serve();
    let resp = client()
        .get(format!("{}/", server.url))
        .send()
        .expect("root");
    assert_eq!(resp.url().path(), "/console/", "GET / leads to the console");
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = resp.text().expect("html");
    // No inline script: every <script> has a src on this origin; no inline style either.
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert!(scripts.len() >= 2, "{html}");
    for s in scripts {
        let tag = &s[..s.find('>').expect("tag end")];
        assert!(
            tag.contains("src=\"/console/"),
            "inline or foreign script: {tag}"
        );
        assert!(
            s[s.find('>').expect("tag end") + 1..].starts_with("</script>"),
            "{s}"
        );
    }
    assert!(
        !html.contains("style=") && !html.contains("<style"),
        "{html}"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for (path, kind) in [
        ("/console/app.js", "javascript"),
        ("/console/style.css", "text/css"),
        ("/console/vendor/echarts.common.min.js", "javascript"),
        ("/console/vendor/echarts-LICENSE.txt", "text/plain"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let resp = client()
            .get(format!("{}{path}", server.url))
            .send()
            .expect("asset");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(ct.contains(kind), "{path}: {ct}");
        assert_eq!(
            resp.headers()
                .get("x-content-type-options")
                .and_then(|v| v.to_str().ok()),
            Some("nosniff"),
            "{path}"
        );
    }
    let (status, body) = json(
        client()
            .get(format!("{}/console/../concordat.toml", server.url))
            .send()
            .expect("traversal"),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = json(
        client()
            .get(format!("{}/console/%2e%2e/concordat.toml", server.url))
            .send()
            .expect("traversal"),
    );
    assert_eq!(status, 404, "{body}");
}
