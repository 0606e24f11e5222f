// The Concordat console. Every action is a call to the /v1 API with the signed-in
// token, so it is checked against the same agreements as any other client; the console
// decides nothing. Data values are always placed with textContent, never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "concordat.token";
  const main = document.getElementById("main");
  const statusLine = document.getElementById("status");
  let me = null; // GET /v1/me
  let catalogue = null; // GET /v1/datasets
  const charts = [];

  // ---------- small DOM helpers ----------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function say(text) { statusLine.textContent = text; }
  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return v.toLocaleString("en-GB");
      return v.toLocaleString("en-GB", { maximumFractionDigits: 3 });
    }
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function ordinal(n) {
    const s = ["th", "st", "nd", "rd"], v = n % 100;
    return n + (s[(v - 20) % 10] || s[v] || s[0]);
  }
  const QUARTILES = ["", "top (best) quarter", "second quarter", "third quarter", "bottom quarter"];

  // ---------- the API ----------
  function token() { return sessionStorage.getItem(TOKEN_KEY); }
  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status; this.code = code; this.details = details;
    }
  }
  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ Authorization: "Bearer " + token() }, opts.headers);
    const res = await fetch(path, opts);
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      const e = body && body.error ? body.error : { code: "http_" + res.status, message: res.statusText };
      if (res.status === 401 && path !== "/v1/me") signOut("Your token was refused: " + e.message);
      throw new ApiError(res.status, e.code, e.message, e.details);
    }
    return res;
  }
  async function getJson(path) { return (await api(path)).json(); }
  async function query(sql, purpose, accept) {
    return api("/v1/query", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: accept || "application/json" },
      body: JSON.stringify({ sql: sql, purpose: purpose }),
    });
  }
  function errorBox(e) {
    if (!(e instanceof ApiError)) return h("div", { class: "error", role: "alert" }, String(e));
    const box = h("div", { class: "error", role: "alert" },
      h("code", {}, e.code), " ", h("span", {}, "(" + e.status + ") "), e.message);
    return box;
  }
  async function download(path, options, filename) {
    say("Preparing " + filename + " ...");
    const res = await api(path, options);
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    say("Downloaded " + filename);
  }

  // ---------- session ----------
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null; catalogue = null;
    document.getElementById("nav").hidden = true;
    document.getElementById("who").hidden = true;
    location.hash = "#/signin";
    if (message) setTimeout(() => say(message), 0);
  }
  document.getElementById("sign-out").addEventListener("click", () => signOut("Signed out"));

  function can(what) {
    if (!me) return false;
    const roles = me.roles || [];
    switch (what) {
      case "upload": return roles.includes("uploader") && (catalogue || []).some((d) => d.can_upload);
      case "efficiency": return readable("force_efficiency");
      case "area": return !!me.force_area;
      case "audit": return roles.includes("auditor") || roles.includes("admin");
      default: return true;
    }
  }
  function readable(name) {
    return (catalogue || []).some((d) => d.name === name && d.access);
  }
  function dataset(name) { return (catalogue || []).find((d) => d.name === name); }
  function purposesOf(name) { const d = dataset(name); return d ? d.purposes : []; }
  function allPurposes() {
    const set = new Set();
    for (const d of catalogue || []) for (const p of d.purposes) set.add(p);
    return Array.from(set).sort();
  }

  async function loadSession() {
    me = await getJson("/v1/me");
    catalogue = (await getJson("/v1/datasets")).datasets;
    contract = null;
    const nav = document.getElementById("nav");
    nav.hidden = false;
    for (const a of nav.querySelectorAll("a[data-needs]")) a.hidden = !can(a.dataset.needs);
    document.getElementById("who").hidden = false;
    const area = me.force_area && me.force_area.force_name !== me.name ? " · " + me.force_area.force_name : "";
    document.getElementById("who-name").textContent = me.name + area + " · " + me.roles.join(", ");
  }
  let contract = null;
  async function contractNames() {
    if (!contract) contract = (await getJson("/v1/datasets")).contract || [];
    return contract;
  }

  // ---------- router ----------
  const views = {
    "signin": viewSignIn,
    "": viewMe,
    "datasets": viewDatasets,
    "dataset": viewDataset,
    "why": viewWhy,
    "sql": viewSql,
    "upload": viewUpload,
    "efficiency": viewEfficiency,
    "area": viewArea,
    "audit": viewAudit,
    "tokens": viewTokens,
  };
  async function route() {
    for (const c of charts.splice(0)) c.dispose();
    const hash = location.hash.replace(/^#\/?/, "");
    const [name, ...rest] = hash.split("/");
    const arg = rest.map(decodeURIComponent).join("/");
    if (!token() && name !== "signin") { location.hash = "#/signin"; return; }
    if (token() && !me) {
      try { await loadSession(); } catch (e) {
        if (e instanceof ApiError && e.status === 401) return;
        clear(main); main.append(errorBox(e)); return;
      }
    }
    for (const a of document.querySelectorAll("nav a")) {
      const target = a.getAttribute("href").replace(/^#\/?/, "");
      const current = target === name || (target === "datasets" && (name === "dataset" || name === "why"));
      if (current) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    clear(main);
    const view = views[name];
    if (!view) { main.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Back to the start"))); return; }
    try {
      await view(arg);
    } catch (e) {
      main.append(errorBox(e));
    }
    if (name !== "signin") main.focus({ preventScroll: true });
  }
  window.addEventListener("hashchange", route);

  // ---------- sign in ----------
  async function viewSignIn() {
    document.title = "Sign in · Concordat";
    const input = h("input", { type: "password", id: "token", autocomplete: "off", spellcheck: "false", size: "60", "aria-describedby": "token-help" });
    const out = h("div", { "aria-live": "polite" });
    const form = h("form", { class: "card signin", id: "signin-form" },
      h("h1", {}, "Sign in to Concordat"),
      h("label", { for: "token" }, "Token"),
      input,
      h("p", { id: "token-help", class: "muted small" },
        "A JWT from your organisation's sign-in or a personal access token (cct_...). " +
        "It is kept in this tab only and forgotten when the tab closes."),
      h("button", { type: "submit", class: "primary" }, "Sign in"),
      out);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clear(out);
      const t = input.value.trim();
      if (!t) { out.append(h("div", { class: "error", role: "alert" }, "Paste a token first.")); return; }
      sessionStorage.setItem(TOKEN_KEY, t);
      try {
        await loadSession();
        location.hash = "#/";
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        me = null;
        out.append(errorBox(e));
      }
    });
    main.append(form);
    input.focus();
  }

  // ---------- me ----------
  async function viewMe() {
    document.title = "Me · Concordat";
    const area = me.force_area;
    main.append(h("h1", {}, me.name),
      h("div", { class: "card" }, h("dl", { class: "kv", id: "me" },
        h("dt", {}, "Partner"), h("dd", {}, me.partner),
        h("dt", {}, "Kind"), h("dd", {}, me.kind.replace(/_/g, " ")),
        h("dt", {}, "Force area"), h("dd", {}, area ? area.force_name + " (" + area.pfa_code + ", " + area.region + ")" : "all areas"),
        me.probation_region ? [h("dt", {}, "Probation region"), h("dd", {}, me.probation_region)] : null,
        h("dt", {}, "Roles"), h("dd", {}, me.roles.join(", ")),
        h("dt", {}, "Signed in as"), h("dd", {}, me.subject))));
    const rows = me.agreements.map((a) => h("tr", {},
      h("td", {}, h("strong", {}, a.title), h("div", { class: "muted small" }, a.id)),
      h("td", {}, a.purposes.map((p) => h("span", { class: "pill" }, p))),
      h("td", {}, a.read.map((r) => h("div", {}, h("a", { href: "#/dataset/" + encodeURIComponent(r.dataset) }, r.dataset), " ",
        h("span", { class: "pill " + r.access }, r.access), " ", h("span", { class: "muted small" }, r.scope.replace(/_/g, " "))))),
      h("td", {}, a.upload.join(", ") || "—"),
      h("td", {}, a.valid_from + " to " + a.valid_until),
      h("td", { class: "small" }, a.lawful_basis.join("; "))));
    main.append(h("div", { class: "card" },
      h("table", { id: "agreements" },
        h("caption", {}, "Agreements in force for you today (" + me.agreements.length + ")"),
        h("thead", {}, h("tr", {}, ["Agreement", "Purposes", "May read", "May upload", "In force", "Lawful basis"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows))));
  }

  // ---------- datasets ----------
  async function viewDatasets() {
    document.title = "Datasets · Concordat";
    main.append(h("h1", {}, "Datasets"));
    const rows = catalogue.map((d) => h("tr", {},
      h("td", {}, h("a", { href: "#/dataset/" + encodeURIComponent(d.name) }, d.name), h("div", { class: "muted small" }, d.title)),
      h("td", {}, d.access ? h("span", { class: "pill " + d.access }, d.access) : h("span", { class: "muted" }, "upload only")),
      h("td", {}, d.purposes.map((p) => h("span", { class: "pill" }, p))),
      h("td", { class: "num" }, d.columns.length),
      h("td", { class: "num" }, d.latest_version === null ? "shipped" : fmt(d.latest_version)),
      h("td", {}, d.can_upload ? "yes" : "—"),
      h("td", { class: "small" }, d.disclosure ? "groups ≥ " + d.disclosure.min_count + ", rounded to " + d.disclosure.round_to : "")));
    main.append(h("div", { class: "card" }, h("table", { id: "datasets" },
      h("caption", {}, "What you may see (" + catalogue.length + ")"),
      h("thead", {}, h("tr", {}, ["Dataset", "Access", "Purposes", "Columns", "Latest version", "You may upload", "Disclosure control"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))));
    const names = await contractNames();
    const unseen = names.filter((n) => !catalogue.some((d) => d.name === n));
    main.append(h("div", { class: "card" },
      h("h2", {}, "Why can't I see this?"),
      h("p", {}, "Every dataset of the gateway, and which of your agreements allow or refuse it."),
      h("ul", { id: "why-list" }, names.map((n) => h("li", {},
        h("a", { href: "#/why/" + encodeURIComponent(n) }, n),
        unseen.includes(n) ? h("span", { class: "pill refused" }, "not visible to you") : null)))));
  }

  async function viewDataset(name) {
    document.title = name + " · Concordat";
    const d = await getJson("/v1/datasets/" + encodeURIComponent(name));
    main.append(h("h1", {}, d.title, " ", h("span", { class: "muted" }, "(" + d.name + ")")),
      h("p", {}, d.description),
      h("div", { class: "card" }, h("dl", { class: "kv" },
        h("dt", {}, "Your access"), h("dd", {}, d.access ? h("span", { class: "pill " + d.access }, d.access) : "upload only"),
        h("dt", {}, "Purposes"), h("dd", {}, d.purposes.join(", ") || "—"),
        h("dt", {}, "Period column"), h("dd", {}, d.period_column || "—"),
        d.disclosure ? [h("dt", {}, "Disclosure control"), h("dd", {}, "cells need " + d.disclosure.min_count + " persons; values rounded to " + d.disclosure.round_to)] : null,
        h("dt", {}, "Under"), h("dd", {}, d.agreements.map((a) => h("div", {}, a.id + ": " + a.access + ", " + a.scope.replace(/_/g, " ") + " (" + a.purposes.join(", ") + "), until " + a.valid_until))),
        h("dt", {}, "Why?"), h("dd", {}, h("a", { href: "#/why/" + encodeURIComponent(d.name) }, "The policy explanation")))));
    const cols = d.columns.map((c) => {
      const marks = [];
      if (c.join_only) marks.push(h("span", { class: "pill aggregate" }, "join only"));
      if (c.generalised) marks.push(h("span", { class: "pill aggregate" }, "generalised: " + c.generalised));
      return h("tr", {}, h("td", {}, h("code", {}, c.name)), h("td", {}, c.type), h("td", {}, c.nullable ? "yes" : "no"),
        h("td", {}, marks), h("td", { class: "small" }, c.description, c.enum ? h("div", { class: "muted" }, "one of: " + c.enum.join(", ")) : null));
    });
    main.append(h("div", { class: "card" }, h("table", { id: "columns" },
      h("caption", {}, "Columns as you see them (" + d.columns.length + "); columns your agreements hide are not listed"),
      h("thead", {}, h("tr", {}, ["Column", "Type", "Nullable", "Masking", "Description"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, cols))));
    if (!d.shipped) {
      const vs = d.versions.slice().reverse().map((v) => h("tr", {},
        h("td", { class: "num" }, v.version), h("td", {}, v.committed_at || ""), h("td", {}, v.operation || ""),
        h("td", {}, v.partner || ""), h("td", {}, v.mode || ""), h("td", { class: "num" }, fmt(v.rows)),
        h("td", { class: "small" }, (v.periods || []).join(", ")),
        h("td", { class: "small" }, v.sha256 ? h("code", { title: v.sha256 }, v.sha256.slice(0, 12) + "…") : (v.sources ? "built from " + JSON.stringify(v.sources) : ""))));
      main.append(h("div", { class: "card" }, h("div", { class: "scroll" }, h("table", { id: "versions" },
        h("caption", {}, "Versions, newest first (" + d.versions.length + ")"),
        h("thead", {}, h("tr", {}, ["Version", "Committed", "Operation", "By", "Mode", "Rows", "Periods", "SHA-256 / sources"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, vs)))));
    }
  }

  async function viewWhy(name) {
    document.title = "Why: " + name + " · Concordat";
    const e = await getJson("/v1/datasets/" + encodeURIComponent(name) + "/explain");
    main.append(h("h1", {}, "Why can I or can't I see " + e.dataset + "?"),
      h("p", { class: "muted" }, "For " + e.partner + " on " + e.on + ", from the agreements the gateway enforces at every door."));
    for (const x of e.explanations) {
      main.append(h("div", { class: "card", "data-purpose": x.purpose },
        h("h2", {}, x.purpose, " ", h("span", { class: "pill " + (x.allowed ? "ok" : "refused") }, x.allowed ? "allowed" : "refused")),
        h("ul", { class: "lines" }, x.lines.map((l) => h("li", {}, l)))));
    }
  }

  // ---------- SQL ----------
  let lastSql = null;
  async function viewSql(preset) {
    document.title = "SQL · Concordat";
    const purposes = allPurposes();
    let want = null;
    if (preset) { try { want = JSON.parse(preset); } catch (_) { want = null; } }
    const purpose = h("select", { id: "purpose" }, purposes.map((p) => h("option", { value: p }, p)));
    if (want && purposes.includes(want.purpose)) purpose.value = want.purpose;
    else if (lastSql && purposes.includes(lastSql.purpose)) purpose.value = lastSql.purpose;
    const editor = h("textarea", { id: "sql", rows: "9", spellcheck: "false", "aria-describedby": "sql-help" });
    editor.value = want ? want.sql : (lastSql ? lastSql.sql : defaultSql());
    const run = h("button", { type: "button", class: "primary", id: "run" }, "Run");
    const out = h("div", { id: "result", "aria-live": "polite" });
    const names = h("div", { class: "names", id: "names" });
    function insert(text) {
      const [a, b] = [editor.selectionStart, editor.selectionEnd];
      editor.setRangeText(text, a, b, "end");
      editor.focus();
    }
    function showNames() {
      clear(names);
      const p = purpose.value;
      for (const d of catalogue.filter((d) => d.access && d.purposes.includes(p))) {
        names.append(h("details", { open: true },
          h("summary", {}, h("button", { type: "button", onclick: () => insert(d.name), title: "Insert " + d.name }, d.name), " ",
            h("span", { class: "pill " + d.access }, d.access)),
          h("div", {}, d.columns.map((c) => h("button", { type: "button", onclick: () => insert(c), title: "Insert " + c }, c)))));
      }
    }
    purpose.addEventListener("change", showNames);
    showNames();
    function defaultSql() {
      const d = catalogue.find((x) => x.access && x.purposes.includes(purpose.value)) || catalogue[0];
      return d ? "SELECT *\nFROM " + d.name + "\nLIMIT 100" : "";
    }
    async function go() {
      clear(out);
      const sql = editor.value, p = purpose.value;
      lastSql = { sql: sql, purpose: p };
      run.disabled = true;
      say("Running ...");
      const started = performance.now();
      try {
        const answer = await (await query(sql, p)).json();
        say("Answered in " + Math.round(performance.now() - started) + " ms");
        out.append(answerView(answer, sql, p));
      } catch (e) {
        say("");
        out.append(errorBox(e));
      } finally {
        run.disabled = false;
      }
    }
    run.addEventListener("click", go);
    editor.addEventListener("keydown", (ev) => {
      if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); go(); }
    });
    main.append(h("h1", {}, "SQL"),
      h("div", { class: "grid-sql" },
        h("div", { class: "card" },
          h("div", { class: "row" },
            h("div", {}, h("label", { for: "purpose" }, "Purpose"), purpose)),
          h("label", { for: "sql" }, "Query"),
          editor,
          h("p", { id: "sql-help", class: "muted small" }, "One read-only statement. Run with the button or Ctrl+Enter. Names on the right insert at the cursor."),
          run),
        h("div", { class: "card" }, h("h2", {}, "Datasets for this purpose"), names)),
      out);
    editor.focus();
  }

  function answerView(answer, sql, purpose) {
    const wrap = h("div", { class: "card" });
    const marker = answer.disclosure && answer.disclosure.marker_column;
    const markerIndex = marker ? answer.columns.findIndex((c) => c.name === marker) : -1;
    const shown = answer.columns.map((c, i) => i).filter((i) => i !== markerIndex);
    let withheldRows = 0, withheldCells = 0;
    const body = answer.rows.map((r) => {
      const isWithheld = markerIndex >= 0 && r[markerIndex] === true;
      if (isWithheld) withheldRows++;
      return h("tr", { class: isWithheld ? "withheld" : null }, shown.map((i) => {
        const v = r[i];
        if (isWithheld && v === null) { withheldCells++; return h("td", { class: "withheld", title: "withheld by disclosure control" }, "withheld"); }
        return h("td", { class: typeof v === "number" ? "num" : null }, fmt(v));
      }));
    });
    wrap.append(h("div", { class: "metric-head" },
      h("h2", {}, fmt(answer.row_count) + " row" + (answer.row_count === 1 ? "" : "s") + (answer.truncated ? " (cut at the row limit)" : "")),
      h("div", { class: "downloads" },
        h("button", { type: "button", class: "secondary", onclick: () => download("/v1/query", queryOpts(sql, purpose, "text/csv"), "answer.csv").catch(showErr) }, "CSV"),
        h("button", { type: "button", class: "secondary", onclick: () => download("/v1/query", queryOpts(sql, purpose, "application/vnd.apache.parquet"), "answer.parquet").catch(showErr) }, "Parquet"),
        h("button", { type: "button", class: "secondary", onclick: () => download("/v1/query", queryOpts(sql, purpose, "application/x-ndjson"), "answer.ndjson").catch(showErr) }, "NDJSON"),
        h("button", { type: "button", class: "secondary", onclick: () => download("/v1/query", queryOpts(sql, purpose, "application/vnd.apache.arrow.stream"), "answer.arrows").catch(showErr) }, "Arrow"))));
    function showErr(e) { wrap.append(errorBox(e)); }
    if (answer.disclosure) wrap.append(disclosureView(answer.disclosure, withheldRows, withheldCells));
    wrap.append(h("div", { class: "scroll" }, h("table", { id: "answer" },
      h("thead", {}, h("tr", {}, shown.map((i) => h("th", { scope: "col", title: answer.columns[i].type }, answer.columns[i].name)))),
      h("tbody", {}, body))));
    return wrap;
  }
  function queryOpts(sql, purpose, accept) {
    return { method: "POST", headers: { "Content-Type": "application/json", Accept: accept }, body: JSON.stringify({ sql: sql, purpose: purpose }) };
  }
  function disclosureView(d, withheldRows, withheldCells) {
    if (d.access !== "aggregate") {
      return h("p", { class: "muted small", id: "disclosure" }, "Record-level answer under " + (d.agreements || []).join(", ") + ".");
    }
    const items = [];
    items.push(h("li", {}, h("strong", {}, "Withheld: "), withheldRows
      ? withheldCells + " cell" + (withheldCells === 1 ? "" : "s") + " in " + withheldRows + " row" + (withheldRows === 1 ? "" : "s") + " (marked below), because fewer than " + d.min_count + " persons were behind them"
      : "nothing: every group had at least " + d.min_count + " persons"));
    if (d.round_to) items.push(h("li", {}, h("strong", {}, "Rounded: "), (d.rounded_cells || 0) + " cell" + (d.rounded_cells === 1 ? "" : "s") + " to the nearest " + d.round_to + (d.rounded_columns && d.rounded_columns.length ? " (" + d.rounded_columns.join(", ") + ")" : "")));
    if (d.perturbation) items.push(h("li", {}, h("strong", {}, "Perturbed: "), d.perturbation.method + "; at most ±" + d.perturbation.max_abs + " before rounding"));
    return h("div", { class: "notice", id: "disclosure" },
      h("strong", {}, "Disclosure control applied"), " under ", (d.agreements || []).join(", "),
      h("ul", {}, items),
      d.rules ? h("details", {}, h("summary", {}, "The rules"), h("ul", {}, d.rules.map((r) => h("li", { class: "small" }, r)))) : null);
  }

  // ---------- uploads ----------
  async function viewUpload() {
    document.title = "Upload · Concordat";
    const mine = me.roles.includes("uploader") ? catalogue.filter((d) => d.can_upload) : [];
    const ds = h("select", { id: "upload-dataset" }, mine.map((d) => h("option", { value: d.name }, d.name + " — " + d.title)));
    const mode = h("select", { id: "upload-mode" }, h("option", { value: "append" }, "append: add these rows"),
      h("option", { value: "replace_periods" }, "replace_periods: replace the periods in this file"));
    const file = h("input", { type: "file", id: "upload-file", accept: ".parquet,application/vnd.apache.parquet" });
    const send = h("button", { type: "button", class: "primary", id: "upload-send" }, "Upload");
    const bar = h("progress", { id: "upload-progress", max: "100", value: "0", "aria-label": "Upload progress" });
    const pct = h("span", { id: "upload-percent", class: "muted small" }, "");
    const out = h("div", { id: "upload-result", "aria-live": "polite" });
    send.addEventListener("click", () => {
      clear(out);
      const f = file.files[0];
      if (!f) { out.append(h("div", { class: "error", role: "alert" }, "Choose a Parquet file first.")); return; }
      send.disabled = true;
      bar.value = 0;
      let events = 0;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/v1/datasets/" + encodeURIComponent(ds.value) + "/uploads?mode=" + encodeURIComponent(mode.value));
      xhr.setRequestHeader("Authorization", "Bearer " + token());
      xhr.setRequestHeader("Content-Type", "application/vnd.apache.parquet");
      xhr.upload.onprogress = (ev) => {
        events += 1;
        bar.dataset.events = String(events);
        if (ev.lengthComputable) {
          bar.value = Math.round((100 * ev.loaded) / ev.total);
          pct.textContent = bar.value + "% of " + fmt(ev.total) + " bytes sent";
        }
      };
      xhr.upload.onload = () => { bar.value = 100; pct.textContent = "Sent; checking every row against the agreement ..."; };
      xhr.onerror = () => { send.disabled = false; out.append(h("div", { class: "error", role: "alert" }, "The upload did not reach the gateway.")); };
      xhr.onload = () => {
        send.disabled = false;
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { body = null; }
        if (xhr.status === 201 || xhr.status === 200) {
          pct.textContent = "Done";
          out.append(h("div", { class: "good", id: "upload-done" },
            h("strong", {}, xhr.status === 201 ? "Committed as version " + body.version : "Already committed as version " + body.version + ": the same bytes, nothing changed"),
            h("dl", { class: "kv" },
              h("dt", {}, "Dataset"), h("dd", {}, body.dataset),
              h("dt", {}, "Rows"), h("dd", {}, fmt(body.rows)),
              h("dt", {}, "Periods"), h("dd", {}, body.periods.join(", ")),
              h("dt", {}, "SHA-256"), h("dd", {}, h("code", {}, body.sha256)))),
            h("p", {}, h("a", { href: "#/dataset/" + encodeURIComponent(body.dataset) }, "See every version of " + body.dataset)));
          catalogue = null; me = null; // the latest versions changed
          return;
        }
        pct.textContent = "Refused";
        const e = body && body.error ? body.error : { code: "http_" + xhr.status, message: xhr.statusText };
        out.append(errorBox(new ApiError(xhr.status, e.code, e.message, e.details)));
        if (e.details && e.details.violations) out.append(violationsView(e.details));
      };
      xhr.send(f);
    });
    main.append(h("h1", {}, "Upload"),
      mine.length === 0 ? h("p", {}, me.roles.includes("uploader") ? "None of your agreements lets you upload." : "Uploads need the uploader role; your credential does not carry it.") :
        h("div", { class: "card" },
          h("div", { class: "row" },
            h("div", {}, h("label", { for: "upload-dataset" }, "Dataset"), ds),
            h("div", {}, h("label", { for: "upload-mode" }, "Mode"), mode),
            h("div", {}, h("label", { for: "upload-file" }, "Parquet file"), file)),
          h("p", { class: "muted small" }, "Every row is checked against the dataset's schema and your agreement's scope; nothing is committed unless every row passes."),
          send,
          h("div", {}, bar, pct)),
      out);
  }
  function violationsView(details) {
    // The API's own summary (every violation counted, by column and rule), with the
    // message of the first listed violation of each group.
    const message = (column, rule) => {
      const v = details.violations.find((x) => (x.column || "(file)") === column && x.rule === rule);
      return v ? v.message : "";
    };
    let groups = (details.summary || []).map((g) => ({ column: g.column || "(file)", rule: g.rule, count: g.count, rows: g.rows || [] }));
    if (groups.length === 0) {
      const by = new Map();
      for (const v of details.violations) {
        const key = (v.column || "(file)") + "\u0000" + v.rule;
        if (!by.has(key)) by.set(key, { column: v.column || "(file)", rule: v.rule, count: 0, rows: [] });
        const g = by.get(key);
        g.count += 1;
        if (v.row !== null && v.row !== undefined) g.rows.push(v.row);
      }
      groups = Array.from(by.values());
    }
    const rows = groups.map((g) => h("tr", {},
      h("td", {}, h("code", {}, g.column)), h("td", {}, g.rule), h("td", { class: "num" }, fmt(g.count)),
      h("td", { class: "small" }, g.rows.slice(0, 8).join(", ") + (g.count > Math.min(g.rows.length, 8) ? ", …" : "")),
      h("td", { class: "small" }, message(g.column, g.rule))));
    return h("div", { class: "card" }, h("table", { id: "violations" },
      h("caption", {}, fmt(details.violation_count || details.violations.length) + " violations, by column and rule; nothing was committed"),
      h("thead", {}, h("tr", {}, ["Column", "Rule", "Rows", "First rows", "What was wrong"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  }

  // ---------- charts ----------
  function chart(el) {
    const c = window.echarts.init(el, null, { renderer: "svg" });
    charts.push(c);
    return c;
  }
  window.addEventListener("resize", () => { for (const c of charts) c.resize(); });
  const HIGHLIGHT = "#c0392b", BAR = "#9fb3c8", MSG = "#1d3557", NATIONAL = "#2a9d8f";

  // ---------- efficiency ----------
  async function efficiencyYears(purpose) {
    const res = await query("SELECT DISTINCT financial_year FROM force_efficiency ORDER BY financial_year DESC", purpose);
    return (await res.json()).rows.map((r) => r[0]);
  }
  async function extract(fy, purpose) {
    return (await api("/v1/extracts/efficiency?format=json&financial_year=" + encodeURIComponent(fy) + "&purpose=" + encodeURIComponent(purpose))).json();
  }
  function extractRows(ex) {
    return ex.rows.map((r) => Object.fromEntries(ex.columns.map((c, i) => [c, r[i]])));
  }
  async function viewEfficiency(arg) {
    document.title = "Efficiency · Concordat";
    const purpose = purposesOf("force_efficiency")[0];
    const years = await efficiencyYears(purpose);
    main.append(h("h1", {}, "Efficiency comparison"));
    if (years.length === 0) { main.append(h("p", {}, "The efficiency dataset has no financial year yet.")); return; }
    const [wantForce, wantYear] = (arg || "").split("|");
    const fy = h("select", { id: "eff-year" }, years.map((y) => h("option", { value: y }, y)));
    if (wantYear && years.includes(wantYear)) fy.value = wantYear;
    const force = h("select", { id: "eff-force" });
    const out = h("div", { id: "eff-charts" });
    const words = h("div", { id: "eff-words" });
    const dl = h("div", { class: "downloads" },
      ["xlsx", "csv", "parquet"].map((f) => h("button", { type: "button", class: "secondary", id: "eff-" + f,
        onclick: () => download("/v1/extracts/efficiency?format=" + f + "&financial_year=" + encodeURIComponent(fy.value) + "&purpose=" + encodeURIComponent(purpose), {}, "efficiency-" + fy.value + "." + f).catch((e) => out.prepend(errorBox(e))) },
        "Download " + f)));
    main.append(h("div", { class: "card" },
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "eff-force" }, "Force"), force),
        h("div", {}, h("label", { for: "eff-year" }, "Financial year"), fy),
        h("div", {}, dl)),
      h("p", { class: "muted small" }, "Each chart shows every force; the chosen force is red, the line its most similar group's weighted value, the dashed line the national weighted value. Under " + purpose + ".")),
      words, out);
    let ex = null, rows = [];
    async function load() {
      say("Loading " + fy.value + " ...");
      ex = await extract(fy.value, purpose);
      rows = extractRows(ex);
      const forces = Array.from(new Map(rows.map((r) => [r.pfa_code, r.force_name])).entries()).sort((a, b) => a[1].localeCompare(b[1]));
      const keep = force.value || wantForce || (me.force_area && me.force_area.pfa_code) || forces[0][0];
      clear(force);
      for (const [code, name] of forces) force.append(h("option", { value: code }, name));
      force.value = forces.some((f) => f[0] === keep) ? keep : forces[0][0];
      draw();
      say("");
    }
    function draw() {
      for (const c of charts.splice(0)) c.dispose();
      clear(out); clear(words);
      const chosen = force.value;
      const name = force.options[force.selectedIndex] ? force.options[force.selectedIndex].text : chosen;
      const metrics = ex.manifest.metrics;
      const sentences = [];
      const grid = h("div", { class: "grid3" });
      for (const m of metrics) {
        const mine = rows.filter((r) => r.metric === m.metric);
        const me_ = mine.find((r) => r.pfa_code === chosen);
        const values = mine.filter((r) => r.value !== null).sort((a, b) => (m.better === "lower" ? a.value - b.value : b.value - a.value));
        const box = h("div", { class: "card metric", "data-metric": m.metric });
        const el = h("div", { class: "chart", role: "img", "aria-label": m.metric + ": " + name + " against all forces" });
        let line = "no figure";
        if (me_ && me_.value !== null) {
          line = name + " ranks " + ordinal(me_.rank) + " of " + values.length + " (" + m.better + " is better), in the " + QUARTILES[me_.quartile] +
            "; " + Math.abs(me_.diff_from_msg_pct).toFixed(1) + "% " + (me_.diff_from_msg_pct >= 0 ? "above" : "below") + " its most similar group";
        } else if (me_ && me_.note) {
          line = me_.note;
        }
        sentences.push(h("li", {}, h("strong", {}, m.metric.replace(/_/g, " ")), ": ", line));
        box.append(h("div", { class: "metric-head" }, h("h3", {}, m.metric.replace(/_/g, " ")), h("span", { class: "muted small" }, m.unit)),
          el, h("p", { class: "small" }, line));
        grid.append(box);
        const bars = values.map((r) => ({
          value: r.value, name: r.force_name,
          itemStyle: { color: r.pfa_code === chosen ? HIGHLIGHT : BAR },
        }));
        const marks = [];
        if (me_ && me_.msg_value !== null) marks.push({ name: "Most similar group", yAxis: me_.msg_value, lineStyle: { color: MSG, type: "solid", width: 2 }, label: { formatter: "MSG", color: MSG } });
        if (me_ && me_.national_value !== null) marks.push({ name: "National", yAxis: me_.national_value, lineStyle: { color: NATIONAL, type: "dashed", width: 2 }, label: { formatter: "National", color: NATIONAL } });
        requestAnimationFrame(() => {
          const c = chart(el);
          c.setOption({
            animation: false,
            grid: { left: 56, right: 64, top: 16, bottom: 24 },
            xAxis: { type: "category", data: values.map((r) => r.force_name), axisLabel: { show: false }, axisTick: { show: false } },
            yAxis: { type: "value", scale: true },
            tooltip: { trigger: "axis", renderMode: "richText" },
            series: [{ type: "bar", data: bars, barCategoryGap: "20%", markLine: { symbol: "none", data: marks, silent: true } }],
          });
        });
      }
      words.append(h("div", { class: "card" }, h("h2", {}, name + ", " + fy.value), h("ul", { id: "eff-sentences" }, sentences)));
      out.append(grid);
    }
    fy.addEventListener("change", () => load().catch((e) => out.prepend(errorBox(e))));
    force.addEventListener("change", draw);
    await load();
  }

  // ---------- area overview ----------
  async function viewArea() {
    const area = me.force_area;
    document.title = "Area overview · Concordat";
    if (!area) {
      main.append(h("h1", {}, "Area overview"),
        h("p", {}, "The area overview is for partners with a force area; " + me.partner + " works across all areas. The efficiency comparison and SQL cover every force your agreements allow."));
      return;
    }
    main.append(h("h1", {}, area.force_name + ": area overview"),
      h("p", { class: "muted" }, "The criminal justice picture for " + area.force_name + ", built from the same queries you can run in SQL, under your agreements and their disclosure control."));
    const sections = [
      { id: "ncpm", title: "National Crime and Policing Measures against baseline", dataset: "force_performance", build: areaNcpm },
      { id: "courts", title: "Court timeliness", dataset: "court_timeliness", build: areaCourts },
      { id: "reoffending", title: "Proven reoffending", dataset: "reoffending_cohort", build: areaReoffending },
      { id: "efficiency", title: "Efficiency against the most similar group", dataset: "force_efficiency", build: areaEfficiency },
    ];
    for (const s of sections) {
      const box = h("section", { class: "card", id: "area-" + s.id, "aria-labelledby": "area-" + s.id + "-h" }, h("h2", { id: "area-" + s.id + "-h" }, s.title));
      main.append(box);
      if (!readable(s.dataset)) {
        box.append(h("p", {}, "Your agreements do not give you " + s.dataset + ". ", h("a", { href: "#/why/" + s.dataset }, "Why?")));
        continue;
      }
      const purpose = purposesOf(s.dataset)[0];
      try { await s.build(box, purpose, area); } catch (e) { box.append(errorBox(e)); }
    }
  }
  function sqlLink(sql, purpose) {
    return h("details", {}, h("summary", { class: "small" }, "The query"), h("div", { class: "sql" }, sql),
      h("a", { class: "small", href: "#/sql/" + encodeURIComponent(JSON.stringify({ sql: sql, purpose: purpose })) }, "Open in SQL"));
  }
  async function rowsOf(sql, purpose) {
    const a = await (await query(sql, purpose)).json();
    return { answer: a, rows: a.rows.map((r) => Object.fromEntries(a.columns.map((c, i) => [c.name, r[i]]))) };
  }
  function marks(answer) {
    const d = answer.disclosure;
    if (!d || d.access !== "aggregate") return null;
    const withheld = answer.rows.filter((r) => r[answer.columns.findIndex((c) => c.name === d.marker_column)] === true).length;
    return h("p", { class: "notice small" }, "Disclosure control: groups need " + d.min_count + " persons, figures perturbed and rounded to " + d.round_to +
      "; " + withheld + " row" + (withheld === 1 ? "" : "s") + " withheld (shown as gaps).");
  }
  async function areaNcpm(box, purpose) {
    const sql = "SELECT quarter, measure, indicator, value, baseline_value\nFROM force_performance\nORDER BY indicator, quarter";
    const { rows } = await rowsOf(sql, purpose);
    const quarters = Array.from(new Set(rows.map((r) => r.quarter))).sort();
    const indicators = Array.from(new Set(rows.map((r) => r.indicator))).sort();
    const latest = quarters[quarters.length - 1];
    const table = indicators.map((ind) => {
      const r = rows.find((x) => x.indicator === ind && x.quarter === latest);
      const change = r && r.baseline_value ? (100 * (r.value - r.baseline_value)) / r.baseline_value : null;
      return h("tr", {}, h("td", {}, ind.replace(/_/g, " ")), h("td", {}, r ? r.measure.replace(/_/g, " ") : ""),
        h("td", { class: "num" }, r ? fmt(r.value) : ""), h("td", { class: "num" }, r ? fmt(r.baseline_value) : ""),
        h("td", { class: "num" }, change === null ? "" : (change >= 0 ? "+" : "") + change.toFixed(1) + "%"));
    });
    const el = h("div", { class: "chart tall", role: "img", "aria-label": "Each indicator as a percentage of its baseline, by quarter" });
    box.append(h("p", { class: "small muted" }, "Each indicator as % of its baseline (100 = baseline), by quarter."), el,
      h("div", { class: "scroll" }, h("table", {}, h("caption", {}, "Latest quarter, " + (latest || "none")),
        h("thead", {}, h("tr", {}, ["Indicator", "Measure", "Value", "Baseline", "Against baseline"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, table))), sqlLink(sql, purpose));
    requestAnimationFrame(() => chart(el).setOption({
      animation: false,
      grid: { left: 48, right: 16, top: 40, bottom: 40 },
      legend: { type: "scroll", top: 0 },
      tooltip: { trigger: "axis", renderMode: "richText" },
      xAxis: { type: "category", data: quarters },
      yAxis: { type: "value", scale: true },
      series: indicators.map((ind) => ({
        type: "line", name: ind.replace(/_/g, " "), showSymbol: false,
        data: quarters.map((q) => { const r = rows.find((x) => x.indicator === ind && x.quarter === q); return r && r.baseline_value ? +(100 * r.value / r.baseline_value).toFixed(1) : null; }),
      })),
    }));
  }
  async function areaCourts(box, purpose) {
    const sql = "SELECT quarter, court_type, count(*) AS cases,\n  avg(completion_date - offence_date) AS mean_days_offence_to_completion\nFROM court_timeliness\nWHERE completion_date IS NOT NULL\nGROUP BY quarter, court_type\nORDER BY quarter, court_type";
    const { answer, rows } = await rowsOf(sql, purpose);
    const quarters = Array.from(new Set(rows.map((r) => r.quarter))).sort();
    const el = h("div", { class: "chart", role: "img", "aria-label": "Mean days from offence to completion by quarter, magistrates and crown" });
    box.append(marks(answer), h("p", { class: "small muted" }, "Mean days from offence to completion of completed cases, by quarter."), el, sqlLink(sql, purpose));
    requestAnimationFrame(() => chart(el).setOption({
      animation: false, grid: { left: 48, right: 16, top: 30, bottom: 40 }, legend: { top: 0 },
      tooltip: { trigger: "axis", renderMode: "richText" },
      xAxis: { type: "category", data: quarters }, yAxis: { type: "value", name: "days" },
      series: ["magistrates", "crown"].map((t) => ({
        type: "line", name: t, connectNulls: false,
        data: quarters.map((q) => { const r = rows.find((x) => x.quarter === q && x.court_type === t); return r ? r.mean_days_offence_to_completion : null; }),
      })),
    }));
  }
  async function areaReoffending(box, purpose) {
    const sql = "SELECT cohort_quarter, count(*) AS offenders,\n  avg(CASE WHEN reoffended THEN 100.0 ELSE 0 END) AS pct_reoffending\nFROM reoffending_cohort\nGROUP BY cohort_quarter\nORDER BY cohort_quarter";
    const { answer, rows } = await rowsOf(sql, purpose);
    const el = h("div", { class: "chart", role: "img", "aria-label": "Proven reoffending rate by cohort quarter" });
    box.append(marks(answer), h("p", { class: "small muted" }, "Proven reoffending rate (%) of each quarterly cohort."), el, sqlLink(sql, purpose));
    requestAnimationFrame(() => chart(el).setOption({
      animation: false, grid: { left: 48, right: 16, top: 16, bottom: 40 },
      tooltip: { trigger: "axis", renderMode: "richText" },
      xAxis: { type: "category", data: rows.map((r) => r.cohort_quarter) }, yAxis: { type: "value", name: "%" },
      series: [{ type: "line", name: "% reoffending", data: rows.map((r) => r.pct_reoffending) }],
    }));
  }
  async function areaEfficiency(box, purpose, area) {
    const years = await efficiencyYears(purpose);
    if (!years.length) { box.append(h("p", {}, "No financial year yet.")); return; }
    const fy = years[0];
    const sql = "SELECT metric, value, msg_value, national_value, diff_from_msg_pct, rank, quartile, unit\nFROM force_efficiency\nWHERE pfa_code = '" + area.pfa_code + "' AND financial_year = '" + fy + "'\nORDER BY metric";
    const { rows } = await rowsOf(sql, purpose);
    box.append(h("table", {}, h("caption", {}, fy),
      h("thead", {}, h("tr", {}, ["Metric", "Value", "Most similar group", "National", "Against group", "Rank", "Quartile"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, h("td", {}, r.metric.replace(/_/g, " ")), h("td", { class: "num" }, fmt(r.value)),
        h("td", { class: "num" }, fmt(r.msg_value)), h("td", { class: "num" }, fmt(r.national_value)),
        h("td", { class: "num" }, r.diff_from_msg_pct === null ? "" : (r.diff_from_msg_pct >= 0 ? "+" : "") + r.diff_from_msg_pct.toFixed(1) + "%"),
        h("td", { class: "num" }, r.rank === null ? "" : ordinal(r.rank)), h("td", {}, r.quartile ? QUARTILES[r.quartile] : ""))))),
      h("p", {}, h("a", { href: "#/efficiency/" + encodeURIComponent(area.pfa_code + "|" + fy) }, "The charts against every force")),
      sqlLink(sql, purpose));
  }

  // ---------- audit ----------
  async function viewAudit() {
    document.title = "Audit · Concordat";
    const partner = h("input", { type: "text", id: "audit-partner", placeholder: "e.g. pcc-kent", size: "18" });
    const action = h("select", { id: "audit-action" }, ["", "query", "upload", "extract", "catalog", "audit_read", "audit_verify", "token_create", "token_revoke"].map((a) => h("option", { value: a }, a || "any")));
    const outcome = h("select", { id: "audit-outcome" }, ["", "ok", "refused", "failed", "cancelled"].map((a) => h("option", { value: a }, a || "any")));
    const apply = h("button", { type: "button", class: "primary", id: "audit-apply" }, "Show");
    const more = h("button", { type: "button", class: "secondary", id: "audit-more" }, "Older events");
    const chain = h("div", { id: "audit-chain" });
    const tbody = h("tbody", {});
    let before = null;
    main.append(h("h1", {}, "Audit trail"), chain,
      h("div", { class: "card" }, h("div", { class: "row" },
        h("div", {}, h("label", { for: "audit-partner" }, "Partner"), partner),
        h("div", {}, h("label", { for: "audit-action" }, "Action"), action),
        h("div", {}, h("label", { for: "audit-outcome" }, "Outcome"), outcome),
        h("div", {}, apply))),
      h("div", { class: "card" }, h("div", { class: "scroll" }, h("table", { id: "audit" },
        h("caption", {}, "Newest first"),
        h("thead", {}, h("tr", {}, ["#", "Time", "Partner", "Action", "Outcome", "Purpose", "Datasets", "Rows", "Door", "SQL"].map((t) => h("th", { scope: "col" }, t)))),
        tbody)), more));
    async function page(reset) {
      if (reset) { clear(tbody); before = null; }
      const q = new URLSearchParams({ order: "newest", limit: "100" });
      if (before) q.set("before", before);
      if (partner.value.trim()) q.set("partner", partner.value.trim());
      if (action.value) q.set("action", action.value);
      if (outcome.value) q.set("outcome", outcome.value);
      const p = await getJson("/v1/audit?" + q);
      for (const e of p.events) {
        tbody.append(h("tr", {}, h("td", { class: "num" }, e.seq), h("td", { class: "small" }, e.time), h("td", {}, e.partner || ""),
          h("td", {}, e.action), h("td", {}, h("span", { class: "pill " + (e.outcome === "ok" ? "ok" : "refused") }, e.outcome), e.code ? h("div", { class: "small muted" }, e.code) : null),
          h("td", {}, e.purpose || ""), h("td", { class: "small" }, e.datasets.map((d) => d.dataset + (d.version === null ? "" : " v" + d.version)).join(", ")),
          h("td", { class: "num" }, fmt(e.rows)), h("td", {}, e.door || "http"), h("td", {}, e.sql ? h("div", { class: "sql" }, e.sql) : "")));
      }
      before = p.next_before;
      more.disabled = p.events.length < 100;
    }
    apply.addEventListener("click", () => page(true).catch((e) => chain.append(errorBox(e))));
    more.addEventListener("click", () => page(false).catch((e) => chain.append(errorBox(e))));
    const v = await getJson("/v1/audit/verify");
    chain.append(v.verified
      ? h("div", { class: "good" }, h("strong", {}, "Chain verified: "), "every event links to the one before it, from the first to the head.")
      : h("div", { class: "error", role: "alert" }, h("strong", {}, "Chain broken: "), v.broken));
    await page(true);
  }

  // ---------- tokens ----------
  async function viewTokens() {
    document.title = "Tokens · Concordat";
    const list = h("tbody", {});
    const out = h("div", { "aria-live": "polite" });
    async function refresh() {
      clear(list);
      const t = await getJson("/v1/tokens");
      for (const x of t.tokens) {
        const revoke = h("button", { type: "button", class: "secondary" }, "Revoke");
        revoke.addEventListener("click", async () => {
          try { await api("/v1/tokens/" + encodeURIComponent(x.id), { method: "DELETE" }); await refresh(); } catch (e) { out.append(errorBox(e)); }
        });
        list.append(h("tr", {}, h("td", {}, x.name), h("td", {}, h("code", {}, x.id)), h("td", {}, x.roles.join(", ")),
          h("td", {}, x.purposes.join(", ") || "any"), h("td", { class: "small" }, x.expires), h("td", {}, x.revoked ? "revoked " + x.revoked : revoke)));
      }
    }
    const name = h("input", { type: "text", id: "token-name", size: "24", value: "Power BI refresh" });
    const days = h("input", { type: "number", id: "token-days", min: "1", max: "365", value: "30" });
    const roles = me.roles.map((r) => h("label", { class: "small" }, h("input", { type: "checkbox", value: r, checked: true }), " " + r));
    const create = h("button", { type: "button", class: "primary" }, "Create");
    create.addEventListener("click", async () => {
      clear(out);
      try {
        const chosen = roles.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
        const res = await api("/v1/tokens", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ name: name.value, roles: chosen, purposes: [], days: Number(days.value) }) });
        const t = await res.json();
        out.append(h("div", { class: "good" }, h("strong", {}, "Copy it now; it is not shown again: "), h("code", {}, t.token)));
        await refresh();
      } catch (e) { out.append(errorBox(e)); }
    });
    main.append(h("h1", {}, "Personal access tokens"),
      h("p", {}, "For tools that keep a password: Power BI, Excel over ODBC, DBeaver. A token acts for " + me.partner + " with the roles you choose."),
      h("div", { class: "card" }, h("div", { class: "row" },
        h("div", {}, h("label", { for: "token-name" }, "Name"), name),
        h("div", {}, h("label", { for: "token-days" }, "Days"), days),
        h("div", {}, h("span", { class: "small" }, "Roles"), roles),
        h("div", {}, create)), out),
      h("div", { class: "card" }, h("table", {}, h("caption", {}, "Your partner's tokens"),
        h("thead", {}, h("tr", {}, ["Name", "Id", "Roles", "Purposes", "Expires", ""].map((t) => h("th", { scope: "col" }, t)))), list)));
    await refresh();
  }

  route();
})();
