//! A store holding reoffending cohorts for Kent with known secrets planted in them, for
//! attacks that must not recover them.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};
use concordat_core::Schemas;
use concordat_policy::Policies;
use concordat_query::QueryLimits;
use concordat_store::{Store, StoreConfig};
use sha2::Digest;

use crate::support::World;

/// Three persons, the only 10-14-year-old girls; two of them reoffended.
pub const G3: &str = "age_band = '10-14' AND sex = 'female'";
/// Nine persons, the only ones sentenced to custody of four years or more, three cohort
/// rows each.
pub const G9: &str = "index_disposal = 'custody_4y_plus'";
/// One boy who reoffended (after 17 days, 3 reoffences).
pub const YES: &str = "age_band = '10-14' AND sex = 'male' AND index_offence_group = 'robbery'";
/// One boy who did not.
pub const NO: &str = "age_band = '10-14' AND sex = 'male' AND index_offence_group = 'drug'";
/// One boy with 40 reoffences.
pub const BIG: &str = "age_band = '10-14' AND sex = 'male' AND index_offence_group = 'theft'";
/// Persons in the cohort.
pub const PERSONS: i64 = 600 + 3 + 9 + 3;

struct Row {
    id: u32,
    quarter: &'static str,
    sex: &'static str,
    age: &'static str,
    offence: &'static str,
    disposal: &'static str,
    previous: &'static str,
    reoffences: i32,
    days: Option<i32>,
}

fn rows() -> Vec<Row> {
    const QUARTERS: [&str; 4] = ["2023Q2", "2023Q3", "2023Q4", "2024Q1"];
    const AGES: [&str; 9] = [
        "15-17", "18-20", "21-24", "25-29", "30-34", "35-39", "40-44", "45-49", "50+",
    ];
    const OFFENCES: [&str; 12] = [
        "violence_against_the_person",
        "sexual",
        "robbery",
        "theft",
        "criminal_damage_and_arson",
        "drug",
        "possession_of_weapons",
        "public_order",
        "miscellaneous_crimes_against_society",
        "summary_non_motoring",
        "summary_motoring",
        "other",
    ];
    const DISPOSALS: [&str; 5] = [
        "custody_lt_12m",
        "custody_12m_to_lt_2y",
        "custody_2y_to_lt_4y",
        "court_order",
        "caution",
    ];
    const PREVIOUS: [&str; 5] = ["0", "1-2", "3-6", "7-10", "11+"];
    let mut out = Vec::new();
    for i in 0..600u32 {
        let k = i as usize;
        let reoffended = i % 3 == 0;
        out.push(Row {
            id: i,
            quarter: QUARTERS[k % 4],
            sex: if i % 2 == 0 { "male" } else { "female" },
            age: AGES[(k / 2) % 9],
            offence: OFFENCES[(k / 3) % 12],
            disposal: DISPOSALS[(k / 5) % 5],
            previous: PREVIOUS[(k / 7) % 5],
            reoffences: if reoffended { 1 + (i % 4) as i32 } else { 0 },
            days: reoffended.then_some(((i * 37) % 366) as i32),
        });
    }
    for (j, reoffended) in [true, true, false].into_iter().enumerate() {
        out.push(Row {
            id: 1000 + j as u32,
            quarter: "2023Q2",
            sex: "female",
            age: "10-14",
            offence: "fraud",
            disposal: "court_order",
            previous: "0",
            reoffences: if reoffended { 5 } else { 0 },
            days: reoffended.then_some(10 * (j as i32 + 1)),
        });
    }
    for j in 0..9u32 {
        for quarter in ["2023Q2", "2023Q3", "2023Q4"] {
            out.push(Row {
                id: 2000 + j,
                quarter,
                sex: "male",
                age: "30-34",
                offence: "theft",
                disposal: "custody_4y_plus",
                previous: "11+",
                reoffences: 2,
                days: Some(100),
            });
        }
    }
    for (id, offence, reoffences, days) in [
        (3000, "robbery", 3, Some(17)),
        (3001, "drug", 0, None),
        (3002, "theft", 40, Some(300)),
    ] {
        out.push(Row {
            id,
            quarter: "2023Q3",
            sex: "male",
            age: "10-14",
            offence,
            disposal: "caution",
            previous: "1-2",
            reoffences,
            days,
        });
    }
    out
}

pub fn batch() -> RecordBatch {
    let rows = rows();
    let text = |f: &dyn Fn(&Row) -> String| -> ArrayRef {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let schema = concordat_store::arrow_schema(
        Schemas::builtin()
            .get("reoffending_cohort")
            .expect("schema"),
    );
    let columns: Vec<ArrayRef> = vec![
        text(&|r| hex::encode(sha2::Sha256::digest(format!("planted-{}", r.id)))),
        text(&|r| r.quarter.to_owned()),
        text(&|_| "E23000032".to_owned()),
        text(&|_| "N57".to_owned()),
        text(&|r| {
            if r.age == "10-14" || r.age == "15-17" {
                "juvenile".to_owned()
            } else {
                "adult".to_owned()
            }
        }),
        text(&|r| r.sex.to_owned()),
        text(&|r| r.age.to_owned()),
        text(&|r| r.offence.to_owned()),
        text(&|r| r.disposal.to_owned()),
        text(&|r| r.previous.to_owned()),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.reoffences > 0).collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(
            rows.iter().map(|r| r.reoffences).collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(
            rows.iter().map(|r| r.days).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("planted batch")
}

/// Kent's planted cohort, under the shipped agreements.
pub async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let policies = Arc::new(Policies::load(&policies_dir).expect("policies"));
    let store = Arc::new(Store::open(StoreConfig::new(dir.path().join("data"))).expect("store"));
    crate::support::load_batches(&store, "reoffending_cohort", &[batch()]).await;
    crate::support::world_of(dir, store, policies, QueryLimits::default())
}
