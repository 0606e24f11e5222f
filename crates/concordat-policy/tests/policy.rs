//! Integration tests of the shipped policies and of policy validation.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use concordat_policy::{Access, Policies, RefusalReason, ScopeFilter};

fn shipped() -> Policies {
    Policies::load(
        &Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
        )
        .join("../../policies"),
    )
    .expect("shipped policies load")
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

fn scratch(agreement: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("../../policies/partners.toml");
    std::fs::copy(src, dir.path().join("partners.toml")).expect("copy");
    let path = dir.path().join("test-agreement.toml");
    std::fs::write(&path, agreement).expect("write");
    (dir, path)
}

fn ds(s: &str) -> concordat_core::DatasetName {
    s.parse().expect("dataset")
}

fn pu(s: &str) -> concordat_core::Purpose {
    s.parse().expect("purpose")
}

#[test]
fn forces_upload_only_their_own_area() {
    let p = shipped();
    let kent = p.partners().get("force-kent").expect("kent");
    let grant = p
        .upload_grant(kent, &ds("force_performance"), day("2025-06-01"))
        .expect("granted");
    assert!(grant.filter.allows("E23000032"));
    assert!(
        !grant.filter.allows("E23000028"),
        "Kent must not write Essex rows"
    );
    assert!(
        p.upload_grant(kent, &ds("reoffending_cohort"), day("2025-06-01"))
            .is_err()
    );
    let probation = p.partners().get("probation").expect("probation");
    let grant = p
        .upload_grant(probation, &ds("reoffending_cohort"), day("2025-06-01"))
        .expect("granted");
    assert_eq!(grant.filter, ScopeFilter::All);
}

#[test]
fn the_contract_rights_table_holds() {
    let p = shipped();
    let on = day("2025-06-01");
    let read = |partner: &str, dataset: &str, purpose: &str| {
        let partner = p.partners().get(partner).expect("partner");
        p.read_grants(partner, &ds(dataset), &pu(purpose), on)
    };
    let pcc = read("pcc-kent", "reoffending_cohort", "reducing-reoffending")
        .expect("pcc reads reoffending");
    assert!(pcc.iter().all(|g| g.terms.access == Access::Aggregate));
    assert!(
        pcc.iter()
            .all(|g| g.filter == ScopeFilter::Forces(["E23000032".to_owned()].into()))
    );
    assert!(
        read("pcc-kent", "court_timeliness", "reducing-reoffending")
            .is_ok_and(|g| g.iter().all(|g| g.terms.access == Access::Aggregate))
    );
    assert!(
        read("pcc-kent", "force_performance", "performance-scrutiny")
            .is_ok_and(|g| g[0].terms.access == Access::Record)
    );
    assert!(
        read("pcc-kent", "force_efficiency", "efficiency-comparison")
            .is_ok_and(|g| g[0].filter == ScopeFilter::All)
    );
    assert!(matches!(
        read("pcc-kent", "reoffending_cohort", "inspection"),
        Err(RefusalReason::PurposeNotCovered { .. })
    ));
    assert!(
        read("hmicfrs", "force_performance", "inspection")
            .is_ok_and(|g| g[0].filter == ScopeFilter::All)
    );
    assert_eq!(
        read("hmicfrs", "reoffending_cohort", "inspection").err(),
        Some(RefusalReason::NoAgreement)
    );
    assert_eq!(
        read("hmicfrs", "court_timeliness", "inspection").err(),
        Some(RefusalReason::NoAgreement)
    );
    assert!(read("home-office", "force_resources", "performance-scrutiny").is_ok());
    assert!(read("panel-kent", "force_efficiency", "performance-scrutiny").is_ok());
    assert!(
        read("probation", "reoffending_cohort", "reducing-reoffending")
            .is_ok_and(|g| g[0].terms.access == Access::Record)
    );
    assert!(read("cps", "court_timeliness", "performance-scrutiny").is_ok());
    assert_eq!(
        read("operator", "force_performance", "audit").err(),
        Some(RefusalReason::NoAgreement)
    );
    for partner in ["operator", "pcc-essex", "cps", "hmicfrs"] {
        assert!(
            read(partner, "police_forces", "audit").is_ok(),
            "{partner} reads police_forces"
        );
    }
}

#[test]
fn agreements_outside_their_dates_refuse_naming_the_dates() {
    let p = shipped();
    let kent = p.partners().get("pcc-kent").expect("kent");
    let err = p
        .read_grants(
            kent,
            &ds("reoffending_cohort"),
            &pu("reducing-reoffending"),
            day("2027-04-01"),
        )
        .expect_err("expired");
    assert!(err.to_string().contains("2027-03-31"), "{err}");
    let err = p
        .read_grants(
            kent,
            &ds("reoffending_cohort"),
            &pu("reducing-reoffending"),
            day("2024-03-31"),
        )
        .expect_err("future");
    assert!(matches!(err, RefusalReason::NotInForce { .. }));
}

#[test]
fn invalid_agreements_name_the_file_and_field() {
    let cases = [
        (
            "title = \"t\"\npurposes = [\"reducing-reoffending\"]\nproviders = { partners = [\"probation\"] }\nrecipients = { kinds = [\"pcc\"] }\n[read.reoffending_cohort]\naccess = \"aggregate\"\nscope = \"own_force_areas\"\n",
            "scope",
        ),
        (
            "title = \"t\"\npurposes = [\"gossip\"]\nproviders = { partners = [\"probation\"] }\n[upload.reoffending_cohort]\nscope = \"all\"\n",
            "purposes",
        ),
        (
            "title = \"t\"\npurposes = [\"inspection\"]\nproviders = { partners = [\"nobody\"] }\n[upload.reoffending_cohort]\nscope = \"all\"\n",
            "providers.partners",
        ),
        (
            "title = \"t\"\npurposes = [\"inspection\"]\nproviders = { partners = [\"cps\"] }\nrecipients = { partners = [\"cps\"] }\n[read.court_timeliness]\naccess = \"record\"\nscope = \"own_force_area\"\n",
            "read.court_timeliness.scope",
        ),
        (
            "title = \"t\"\npurposes = [\"inspection\"]\nproviders = { partners = [\"cps\"] }\nrecipients = { kinds = [\"pcc\"] }\n[read.court_timeliness]\naccess = \"record\"\nscope = \"all\"\nhidden = [\"no_such_column\"]\n",
            "read.court_timeliness.hidden",
        ),
        (
            "title = \"t\"\npurposes = [\"inspection\"]\nvalid_from = \"2026-01-01\"\nvalid_until = \"2025-01-01\"\nproviders = { partners = [\"cps\"] }\n[upload.court_timeliness]\nscope = \"all\"\n",
            "valid_until",
        ),
        (
            "title = \"t\"\npurposes = [\"inspection\"]\nproviders = { partners = [\"cps\"] }\n[upload.reoffending_cohort]\nscope = \"all\"\n",
            "providers",
        ),
        (
            "title = \"t\"\npurposes = [\"inspection\"]\nproviders = { partners = [\"cps\"] }\n[upload.force_efficiency]\nscope = \"all\"\n",
            "upload.force_efficiency",
        ),
    ];
    for (text, field) in cases {
        let (dir, path) = scratch(text);
        let err = Policies::load(dir.path()).expect_err(field).to_string();
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        assert!(err.contains(field), "names `{field}`: {err}");
    }
}

#[test]
fn explain_names_the_agreement_and_rule_that_allow_or_refuse() {
    let p = shipped();
    let on = day("2025-06-01");
    let e = p.explain("pcc-kent", "reoffending_cohort", "reducing-reoffending", on);
    assert!(e.allowed);
    let text = e.lines.join("\n");
    assert!(
        text.contains("probation-pcc-reoffending-mou")
            && text.contains("aggregate only")
            && text.contains("E23000032"),
        "{text}"
    );
    let e = p.explain("pcc-kent", "reoffending_cohort", "inspection", on);
    assert!(!e.allowed);
    assert!(
        e.lines
            .join("\n")
            .contains("permits the purposes reducing-reoffending, not inspection"),
        "{e:?}"
    );
    let e = p.explain(
        "pcc-kent",
        "reoffending_cohort",
        "reducing-reoffending",
        day("2028-01-01"),
    );
    assert!(
        !e.allowed && e.lines.join("\n").contains("not in force"),
        "{e:?}"
    );
    let e = p.explain("hmicfrs", "court_timeliness", "inspection", on);
    assert!(!e.allowed && e.lines[0].contains("default deny"), "{e:?}");
    let e = p.explain(
        "force-kent",
        "force_performance",
        "performance-scrutiny",
        on,
    );
    assert!(
        e.allowed && e.lines.join("\n").contains("upload force_performance"),
        "{e:?}"
    );
}

#[test]
fn combined_grants_take_the_union_of_rows_and_the_strictest_column_rules() {
    use concordat_policy::{ColumnRule, CombinedView, DatasetRead, Generalise, ReadGrant};
    let terms = |hidden: &[&str], month: &[&str]| DatasetRead {
        access: Access::Record,
        scope: concordat_policy::RowScope::All,
        hidden: hidden.iter().map(|s| (*s).to_owned()).collect(),
        generalise: month
            .iter()
            .map(|s| ((*s).to_owned(), Generalise::Month))
            .collect(),
        min_count: 10,
        round_to: 5,
    };
    let own = ReadGrant {
        agreement: "own".parse().expect("id"),
        terms: terms(&[], &[]),
        filter: ScopeFilter::Forces(["E23000032".to_owned()].into()),
    };
    let all = ReadGrant {
        agreement: "all".parse().expect("id"),
        terms: terms(&["person_id"], &["offence_date"]),
        filter: ScopeFilter::All,
    };
    let v =
        CombinedView::of(&[&own, &all], &["person_id", "offence_date", "quarter"]).expect("view");
    assert_eq!(v.scope, ScopeFilter::All);
    assert_eq!(
        v.rules,
        vec![
            ("person_id".to_owned(), Some(ColumnRule::Hidden)),
            (
                "offence_date".to_owned(),
                Some(ColumnRule::Generalised(Generalise::Month))
            ),
            ("quarter".to_owned(), None),
        ],
        "the own-area grant's fuller columns do not extend to every area's rows"
    );
    assert_eq!(CombinedView::of(&[], &["x"]), None);
}
