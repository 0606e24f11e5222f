//! The analyst queries the benchmark runs, and the mix the concurrent analysts run.

/// One analyst query: who asks it, for what, and the SQL (the same text for all engines).
pub(crate) struct BenchQuery {
    pub(crate) name: &'static str,
    pub(crate) partner: &'static str,
    pub(crate) role: &'static str,
    pub(crate) purpose: &'static str,
    pub(crate) sql: &'static str,
}

pub(crate) fn queries() -> Vec<BenchQuery> {
    let q = |name, partner, role, purpose, sql| BenchQuery {
        name,
        partner,
        role,
        purpose,
        sql,
    };
    vec![
        q(
            "reoffending rate by force and quarter",
            "probation",
            "analyst",
            "reducing-reoffending",
            "SELECT pfa_code, cohort_quarter, count(*) AS offenders, avg(CASE WHEN reoffended THEN 1.0 ELSE 0.0 END) AS rate FROM reoffending_cohort GROUP BY pfa_code, cohort_quarter ORDER BY pfa_code, cohort_quarter",
        ),
        q(
            "reoffending by age band and disposal, one force",
            "probation",
            "analyst",
            "reducing-reoffending",
            "SELECT age_band, index_disposal, count(*) AS offenders, avg(CASE WHEN reoffended THEN 1.0 ELSE 0.0 END) AS rate FROM reoffending_cohort WHERE pfa_code = 'E23000032' GROUP BY age_band, index_disposal ORDER BY age_band, index_disposal",
        ),
        q(
            "reoffences per offender by offence group",
            "probation",
            "analyst",
            "reducing-reoffending",
            "SELECT index_offence_group, sum(reoffences) * 1.0 / count(*) AS per_offender FROM reoffending_cohort GROUP BY index_offence_group ORDER BY index_offence_group",
        ),
        q(
            "adult and juvenile rate by year",
            "probation",
            "analyst",
            "reducing-reoffending",
            "SELECT adult_juvenile, substr(cohort_quarter, 1, 4) AS year, avg(CASE WHEN reoffended THEN 1.0 ELSE 0.0 END) AS rate FROM reoffending_cohort GROUP BY adult_juvenile, substr(cohort_quarter, 1, 4) ORDER BY 1, 2",
        ),
        q(
            "days to first reoffence by previous offences",
            "probation",
            "analyst",
            "reducing-reoffending",
            "SELECT previous_offences_band, avg(days_to_first_reoffence) AS mean_days, count(*) AS reoffenders FROM reoffending_cohort WHERE reoffended GROUP BY previous_offences_band ORDER BY 1",
        ),
        q(
            "court median days by offence group",
            "cps",
            "analyst",
            "performance-scrutiny",
            "SELECT offence_group, median((date_part('epoch', completion_date) - date_part('epoch', offence_date)) / 86400) AS median_days, count(*) AS cases FROM court_timeliness WHERE completion_date IS NOT NULL GROUP BY offence_group ORDER BY offence_group",
        ),
        q(
            "charge to first listing by court type and quarter",
            "cps",
            "analyst",
            "performance-scrutiny",
            "SELECT court_type, quarter, avg((date_part('epoch', first_listing_date) - date_part('epoch', charge_date)) / 86400) AS mean_days FROM court_timeliness GROUP BY court_type, quarter ORDER BY court_type, quarter",
        ),
        q(
            "conviction rate by force",
            "cps",
            "analyst",
            "performance-scrutiny",
            "SELECT pfa_code, avg(CASE WHEN outcome = 'convicted' THEN 1.0 ELSE 0.0 END) AS conviction_rate, count(*) AS completed FROM court_timeliness WHERE outcome <> 'outstanding' GROUP BY pfa_code ORDER BY pfa_code",
        ),
        q(
            "reoffending of defendants by court type (join on pseudonym)",
            "probation",
            "analyst",
            "reducing-reoffending",
            "SELECT c.court_type, count(*) AS pairs, avg(CASE WHEN r.reoffended THEN 1.0 ELSE 0.0 END) AS rate FROM reoffending_cohort r JOIN court_timeliness c ON r.person_id = c.person_id GROUP BY c.court_type ORDER BY c.court_type",
        ),
        q(
            "court duration by reoffending (join on pseudonym)",
            "probation",
            "analyst",
            "reducing-reoffending",
            "SELECT r.reoffended, avg((date_part('epoch', c.completion_date) - date_part('epoch', c.offence_date)) / 86400) AS mean_days FROM court_timeliness c JOIN reoffending_cohort r ON c.person_id = r.person_id WHERE c.completion_date IS NOT NULL GROUP BY r.reoffended ORDER BY r.reoffended",
        ),
        q(
            "force performance against baseline",
            "hmicfrs",
            "inspector",
            "inspection",
            "SELECT indicator, avg(value) AS mean, avg(baseline_value) AS baseline, avg(value) / avg(baseline_value) AS against_baseline FROM force_performance WHERE quarter >= '2024Q1' GROUP BY indicator ORDER BY indicator",
        ),
        q(
            "neighbourhood crime by force",
            "hmicfrs",
            "inspector",
            "inspection",
            "SELECT pfa_code, sum(value) AS offences FROM force_performance WHERE measure = 'neighbourhood_crime' GROUP BY pfa_code ORDER BY offences DESC",
        ),
        q(
            "spend per head by year",
            "hmicfrs",
            "inspector",
            "inspection",
            "SELECT financial_year, sum(net_revenue_expenditure_gbp) / sum(population) AS spend_per_head FROM force_resources GROUP BY financial_year ORDER BY financial_year",
        ),
        q(
            "efficiency ranking",
            "hmicfrs",
            "inspector",
            "inspection",
            "SELECT pfa_code, force_name, value, msg_value, rank FROM force_efficiency WHERE financial_year = '2023-24' AND metric = 'cost_per_crime' ORDER BY rank",
        ),
    ]
}

/// The small-query mix of a PCC analyst, for the concurrency run.
pub(crate) const MIX: [(&str, &str); 3] = [
    (
        "performance-scrutiny",
        "SELECT indicator, avg(value) AS mean FROM force_performance WHERE quarter >= '2024Q1' GROUP BY indicator",
    ),
    (
        "efficiency-comparison",
        "SELECT pfa_code, value, rank FROM force_efficiency WHERE financial_year = '2023-24' AND metric = 'spend_per_head' ORDER BY rank LIMIT 10",
    ),
    (
        "reducing-reoffending",
        "SELECT age_band, count(*) AS n, avg(CASE WHEN reoffended THEN 1.0 ELSE 0.0 END) AS rate FROM reoffending_cohort WHERE cohort_quarter >= '2024Q1' GROUP BY age_band",
    ),
];

/// Probation may read court cases record by record, for the benchmark's join queries.
pub(crate) const BENCH_AGREEMENT: &str = r#"
title = "Benchmark: probation research access to court timeliness"
lawful_basis = ["Offender Management Act 2007 s.14"]
purposes = ["reducing-reoffending"]
providers = { partners = ["cps", "hmcts"] }
recipients = { partners = ["probation"] }

[read.court_timeliness]
access = "record"
scope = "all"
"#;

pub(crate) const RECORD_DATASETS: [&str; 5] = [
    "reoffending_cohort",
    "court_timeliness",
    "force_performance",
    "force_resources",
    "force_context",
];
