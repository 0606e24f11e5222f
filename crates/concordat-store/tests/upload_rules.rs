//! Every schema rule rejects a crafted bad file, naming row, column and rule, and
//! nothing is committed.

use arrow::array::AsArray;
use arrow::datatypes::{Date32Type, Float64Type, Int32Type, Int64Type};
use concordat_policy::ScopeFilter;
use concordat_store::{Mode, StoreError};

use crate::support::*;

type Edit = Box<dyn Fn(&arrow::array::RecordBatch) -> (arrow::array::RecordBatch, usize)>;

fn case(
    f: impl Fn(&arrow::array::RecordBatch) -> (arrow::array::RecordBatch, usize) + 'static,
) -> Edit {
    Box::new(f)
}

#[tokio::test]
async fn each_rule_rejects_a_crafted_file_naming_row_column_and_rule() {
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "reoffending_cohort",
            case(|b| (set_text(b, "sex", 3, Some("x")), 3)),
            "sex",
            "enum",
        ),
        (
            "reoffending_cohort",
            case(|b| (set_text(b, "cohort_quarter", 0, None), 0)),
            "cohort_quarter",
            "not_null",
        ),
        (
            "reoffending_cohort",
            case(|b| (set_text(b, "cohort_quarter", 5, Some("2024Q5")), 5)),
            "cohort_quarter",
            "format",
        ),
        (
            "reoffending_cohort",
            case(|b| (set_text(b, "person_id", 7, Some("ABC")), 7)),
            "person_id",
            "format",
        ),
        (
            "reoffending_cohort",
            case(|b| (set_text(b, "pfa_code", 2, Some("E23999999")), 2)),
            "pfa_code",
            "reference",
        ),
        (
            "reoffending_cohort",
            case(|b| (set_text(b, "probation_region_code", 4, Some("N99")), 4)),
            "probation_region_code",
            "reference",
        ),
        (
            "reoffending_cohort",
            case(|b| (set_text(b, "probation_region_code", 6, Some("N56")), 6)),
            "probation_region_code",
            "pfa_in_probation_region",
        ),
        (
            "reoffending_cohort",
            case(|b| {
                let r = row_where(b, "reoffended", false);
                (set_prim::<Int32Type>(b, "reoffences", r, Some(2)), r)
            }),
            "reoffences",
            "reoffences_iff_reoffended",
        ),
        (
            "reoffending_cohort",
            case(|b| {
                let r = row_where(b, "reoffended", false);
                (
                    set_prim::<Int32Type>(b, "days_to_first_reoffence", r, Some(5)),
                    r,
                )
            }),
            "days_to_first_reoffence",
            "days_null_iff_not_reoffended",
        ),
        (
            "reoffending_cohort",
            case(|b| {
                let r = row_where(b, "reoffended", true);
                (
                    set_prim::<Int32Type>(b, "days_to_first_reoffence", r, Some(400)),
                    r,
                )
            }),
            "days_to_first_reoffence",
            "range",
        ),
        (
            "reoffending_cohort",
            case(|b| (set_prim::<Int32Type>(b, "reoffences", 9, Some(-1)), 9)),
            "reoffences",
            "range",
        ),
        (
            "court_timeliness",
            case(|b| {
                let o = b
                    .column(6)
                    .as_any()
                    .downcast_ref::<arrow::array::Date32Array>()
                    .map(|a| a.value(3))
                    .unwrap_or(0);
                (set_prim::<Date32Type>(b, "charge_date", 3, Some(o - 1)), 3)
            }),
            "charge_date",
            "dates_in_order",
        ),
        (
            "court_timeliness",
            case(|b| {
                let r = row_with(b, "outcome", "convicted");
                (set_text(b, "outcome", r, Some("outstanding")), r)
            }),
            "completion_date",
            "completion_null_iff_outstanding",
        ),
        (
            "court_timeliness",
            case(|b| {
                (
                    set_prim::<Date32Type>(b, "offence_date", 1, Some(-10_000)),
                    1,
                )
            }),
            "offence_date",
            "range",
        ),
        (
            "force_performance",
            case(|b| {
                let r = row_with(b, "indicator", "homicide_offences");
                (set_text(b, "indicator", r, Some("knife_offences")), r)
            }),
            "indicator",
            "indicator_belongs_to_measure",
        ),
        (
            "force_performance",
            case(|b| {
                let r = row_with(b, "indicator", "victim_satisfaction_pct");
                (set_prim::<Float64Type>(b, "value", r, Some(150.0)), r)
            }),
            "value",
            "percentage_in_range",
        ),
        (
            "force_performance",
            case(|b| {
                let r = row_with(b, "indicator", "knife_offences");
                (set_text(b, "quarter", r + 12, Some("2019Q1")), r + 12)
            }),
            "indicator",
            "one_row_per_indicator",
        ),
        (
            "force_resources",
            case(|b| {
                (
                    set_prim::<Int64Type>(b, "charges_summonses", 2, Some(10_000_000)),
                    2,
                )
            }),
            "charges_summonses",
            "charges_not_above_crime",
        ),
        (
            "force_resources",
            case(|b| (set_text(b, "financial_year", 1, Some("2020-22")), 1)),
            "financial_year",
            "format",
        ),
        (
            "force_context",
            case(|b| (set_prim::<Float64Type>(b, "urban_pct", 0, Some(101.0)), 0)),
            "urban_pct",
            "range",
        ),
        // Infinity is refused wherever NaN is: one such row would null HMICFRS's averages.
        (
            "force_performance",
            case(|b| {
                let r = row_with(b, "indicator", "knife_offences");
                (
                    set_prim::<Float64Type>(b, "value", r, Some(f64::INFINITY)),
                    r,
                )
            }),
            "value",
            "range",
        ),
        (
            "force_resources",
            case(|b| {
                (
                    set_prim::<Float64Type>(b, "officers_fte", 3, Some(f64::INFINITY)),
                    3,
                )
            }),
            "officers_fte",
            "range",
        ),
    ];
    for (dataset, edit, column, rule) in cases {
        let f = fixture();
        let batch = arrow::compute::concat_batches(
            &synth(dataset, &["kent"])[0].schema(),
            &synth(dataset, &["kent"]),
        )
        .expect("concat");
        let (bad, row) = edit(&batch);
        let v = violations(
            upload(
                &f.store,
                dataset,
                Mode::Append,
                "tester",
                ScopeFilter::All,
                parquet_bytes(&[bad]),
            )
            .await,
        );
        let hit = v.violations.iter().find(|x| x.rule == rule);
        let hit = hit.unwrap_or_else(|| panic!("{dataset}/{rule}: {v:?}"));
        assert_eq!(
            hit.row,
            Some(row as u64 + 1),
            "{dataset}/{rule}: 1-based row"
        );
        assert_eq!(hit.column.as_deref(), Some(column), "{dataset}/{rule}");
        assert!(!hit.message.is_empty());
        assert_eq!(
            f.store.latest_version(dataset).await.expect("version"),
            None,
            "{dataset}/{rule}: nothing committed"
        );
    }
}

#[tokio::test]
async fn violations_never_echo_the_offending_value() {
    let f = fixture();
    let b = &synth("reoffending_cohort", &["kent"])[0];
    let bad = set_text(b, "sex", 1, Some("SECRET-VALUE-123"));
    let v = violations(
        upload(
            &f.store,
            "reoffending_cohort",
            Mode::Append,
            "p",
            ScopeFilter::All,
            parquet_bytes(&[bad]),
        )
        .await,
    );
    let text = serde_json::to_string(&v).expect("json");
    assert!(!text.contains("SECRET-VALUE-123"), "{text}");
}

#[tokio::test]
async fn a_force_may_not_upload_another_forces_rows() {
    let f = fixture();
    let essex = synth("force_performance", &["essex"]);
    let v = violations(
        upload(
            &f.store,
            "force_performance",
            Mode::Append,
            "force-kent",
            kent(),
            parquet_bytes(&essex),
        )
        .await,
    );
    assert_eq!(
        v.count,
        essex[0].num_rows() as u64,
        "every Essex row is refused"
    );
    assert!(
        v.violations
            .iter()
            .all(|x| x.rule == "row_scope" && x.column.as_deref() == Some("pfa_code"))
    );
    assert_eq!(
        v.violations.len(),
        100,
        "the first 100 are kept, the total is counted"
    );
    let mixed = [synth("force_performance", &["kent"]), essex].concat();
    let v = violations(
        upload(
            &f.store,
            "force_performance",
            Mode::Append,
            "force-kent",
            kent(),
            parquet_bytes(&mixed),
        )
        .await,
    );
    assert_eq!(
        v.violations[0].row,
        Some(mixed[0].num_rows() as u64 + 1),
        "the first Essex row"
    );
    assert_eq!(
        f.store
            .latest_version("force_performance")
            .await
            .expect("v"),
        None
    );
    let ok = upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "force-kent",
        kent(),
        parquet_bytes(&synth("force_performance", &["kent"])),
    )
    .await
    .expect("Kent's own rows");
    assert_eq!(ok.version, 0);
}

#[tokio::test]
async fn wrong_columns_and_types_are_named() {
    let f = fixture();
    let b = &synth("force_resources", &["kent"])[0];
    let as_text: arrow::array::StringArray = b
        .column(2)
        .as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.map(|v| v.to_string()))
        .collect();
    let typed = replace(b, 2, std::sync::Arc::new(as_text));
    let v = violations(
        upload(
            &f.store,
            "force_resources",
            Mode::Append,
            "p",
            ScopeFilter::All,
            parquet_bytes(&[typed]),
        )
        .await,
    );
    assert_eq!(
        (
            v.violations[0].row,
            v.violations[0].column.as_deref(),
            v.violations[0].rule.as_str()
        ),
        (None, Some("population"), "type")
    );
    let dropped = b.project(&[0, 1, 2, 3, 4, 5, 6, 7]).expect("project");
    let v = violations(
        upload(
            &f.store,
            "force_resources",
            Mode::Append,
            "p",
            ScopeFilter::All,
            parquet_bytes(&[dropped]),
        )
        .await,
    );
    assert_eq!(
        (
            v.violations[0].column.as_deref(),
            v.violations[0].rule.as_str()
        ),
        (Some("charges_summonses"), "missing_column")
    );
    let extra = arrow::array::RecordBatch::try_new(
        std::sync::Arc::new(arrow::datatypes::Schema::new(
            [
                b.schema().fields().to_vec(),
                vec![std::sync::Arc::new(arrow::datatypes::Field::new(
                    "notes",
                    arrow::datatypes::DataType::Utf8,
                    true,
                ))],
            ]
            .concat(),
        )),
        [
            b.columns().to_vec(),
            vec![std::sync::Arc::new(arrow::array::StringArray::from(vec![
                Some("x");
                b.num_rows()
            ])) as arrow::array::ArrayRef],
        ]
        .concat(),
    )
    .expect("batch");
    let v = violations(
        upload(
            &f.store,
            "force_resources",
            Mode::Append,
            "p",
            ScopeFilter::All,
            parquet_bytes(&[extra]),
        )
        .await,
    );
    assert_eq!(
        (
            v.violations[0].column.as_deref(),
            v.violations[0].rule.as_str()
        ),
        (Some("notes"), "unknown_column")
    );
}

#[tokio::test]
async fn hostile_and_broken_files_are_refused_without_harm() {
    let good = parquet_bytes(&synth("force_performance", &["kent"]));
    let mut footer_lies = good.clone();
    let n = footer_lies.len();
    footer_lies[n - 8..n - 4].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
    let mut garbage_footer = good.clone();
    for b in &mut garbage_footer[n - 300..n - 8] {
        *b = 0xAB;
    }
    let mut flipped = good.clone();
    for b in &mut flipped[200..2000] {
        *b ^= 0x5A;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not parquet",
            b"pfa_code,quarter\nE23000032,2024Q1\n".to_vec(),
        ),
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("footer length beyond the file", footer_lies),
        ("garbage footer", garbage_footer),
        ("corrupt pages", flipped),
    ];
    let f = fixture();
    for (what, bytes) in cases {
        let v = violations(
            upload(
                &f.store,
                "force_performance",
                Mode::Append,
                "p",
                ScopeFilter::All,
                bytes,
            )
            .await,
        );
        assert!(
            v.violations
                .iter()
                .all(|x| x.row.is_none() && x.rule == "parquet"),
            "{what}: {v:?}"
        );
    }
    assert_eq!(
        f.store
            .latest_version("force_performance")
            .await
            .expect("v"),
        None
    );
    let ok = upload(
        &f.store,
        "force_performance",
        Mode::Append,
        "p",
        ScopeFilter::All,
        good,
    )
    .await
    .expect("the store still works");
    assert_eq!(ok.version, 0);
}

#[tokio::test]
async fn declared_sizes_and_ratios_over_the_limits_are_refused_before_decoding() {
    let big = synth("reoffending_cohort", &["metropolitan"]);
    let bytes = parquet_bytes(&big);
    let f = fixture_with(|c| c.file_limits.max_chunk_uncompressed_bytes = 10_000);
    let v = violations(
        upload(
            &f.store,
            "reoffending_cohort",
            Mode::Append,
            "p",
            ScopeFilter::All,
            bytes.clone(),
        )
        .await,
    );
    assert_eq!(v.violations[0].rule, "limits", "{v:?}");
    assert!(
        v.violations[0].message.contains("uncompressed bytes"),
        "{v:?}"
    );
    let f = fixture_with(|c| c.file_limits.max_rows = 100);
    let v = violations(
        upload(
            &f.store,
            "reoffending_cohort",
            Mode::Append,
            "p",
            ScopeFilter::All,
            bytes.clone(),
        )
        .await,
    );
    assert!(v.violations[0].message.contains("rows"), "{v:?}");
    let f = fixture_with(|c| c.max_upload_bytes = 1000);
    match upload(
        &f.store,
        "reoffending_cohort",
        Mode::Append,
        "p",
        ScopeFilter::All,
        bytes,
    )
    .await
    {
        Err(StoreError::TooLarge { limit: 1000 }) => {}
        other => panic!("expected too large, got {other:?}"),
    }
    let staged = std::fs::read_dir(f.dir.path().join("data/staging"))
        .expect("staging")
        .count();
    assert_eq!(staged, 0, "a refused upload leaves nothing staged");
}

/// A file whose footer (and row group) declare far more rows than its pages hold.
fn lying_row_count(good: &[u8], declared: i64) -> Vec<u8> {
    use parquet::file::metadata::{
        FileMetaData, ParquetMetaData, ParquetMetaDataReader, ParquetMetaDataWriter,
        RowGroupMetaData,
    };
    let md = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::copy_from_slice(good))
        .expect("footer");
    let fm = md.file_metadata();
    let file_md = FileMetaData::new(
        fm.version(),
        declared,
        fm.created_by().map(str::to_owned),
        fm.key_value_metadata().cloned(),
        fm.schema_descr_ptr(),
        fm.column_orders().cloned(),
    );
    let groups: Vec<RowGroupMetaData> = md
        .row_groups()
        .iter()
        .enumerate()
        .map(|(i, rg)| {
            RowGroupMetaData::builder(rg.schema_descr_ptr())
                .set_num_rows(if i == 0 { declared } else { 0 })
                .set_total_byte_size(rg.total_byte_size())
                .set_column_metadata(rg.columns().to_vec())
                .build()
                .expect("row group")
        })
        .collect();
    let lying = ParquetMetaData::new(file_md, groups);
    let footer_len =
        u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().expect("4"));
    let data_end = good.len() - 8 - footer_len as usize;
    let mut out = good[..data_end].to_vec();
    ParquetMetaDataWriter::new(&mut out, &lying)
        .finish()
        .expect("write footer");
    out
}

#[tokio::test]
async fn a_footer_that_declares_more_rows_than_the_file_holds_is_refused() {
    let batches = synth("force_resources", &["kent"]);
    let good = parquet_bytes(&batches[..1]);
    let f = fixture();
    let v = violations(
        upload(
            &f.store,
            "force_resources",
            Mode::Append,
            "p",
            ScopeFilter::All,
            lying_row_count(&good, 400_000_000),
        )
        .await,
    );
    assert!(
        v.violations
            .iter()
            .any(|x| x.rule == "parquet" || x.rule == "limits"),
        "{v:?}"
    );
    assert_eq!(
        f.store.latest_version("force_resources").await.expect("v"),
        None
    );
}

#[tokio::test]
async fn two_columns_of_one_name_are_refused() {
    use std::sync::Arc;
    let batch = arrow::compute::concat_batches(
        &synth("force_performance", &["kent"])[0].schema(),
        &synth("force_performance", &["kent"]),
    )
    .expect("concat");
    let value = batch.column_by_name("value").expect("value").clone();
    let text: arrow::array::ArrayRef =
        Arc::new(arrow::array::StringArray::from(vec!["x"; batch.num_rows()]));
    for (name, extra) in [("value", value.clone()), ("value", text), ("VALUE", value)] {
        let mut fields: Vec<arrow::datatypes::FieldRef> =
            batch.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            name,
            extra.data_type().clone(),
            true,
        )));
        let mut columns = batch.columns().to_vec();
        columns.push(extra);
        let doubled = arrow::array::RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(fields)),
            columns,
        )
        .expect("batch");
        let f = fixture();
        let v = violations(
            upload(
                &f.store,
                "force_performance",
                Mode::Append,
                "p",
                ScopeFilter::All,
                parquet_bytes(&[doubled]),
            )
            .await,
        );
        assert!(
            v.violations.iter().any(|x| x.rule == "duplicate_column"),
            "{name}: {v:?}"
        );
        assert_eq!(
            f.store
                .latest_version("force_performance")
                .await
                .expect("v"),
            None
        );
    }
}

/// The batch written without dictionary pages, or with its text as string views: text
/// reaches the checks and the table by another decoding path.
fn other_encodings(batch: &arrow::array::RecordBatch) -> Vec<(&'static str, Vec<u8>)> {
    let plain = {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_dictionary_enabled(false)
            .build();
        let mut out = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), Some(props))
            .expect("writer");
        w.write(batch).expect("write");
        w.close().expect("close");
        out
    };
    let mut views = batch.clone();
    for (i, f) in batch.schema().fields().iter().enumerate() {
        if f.data_type() == &arrow::datatypes::DataType::Utf8 {
            let v = arrow::compute::cast(batch.column(i), &arrow::datatypes::DataType::Utf8View)
                .expect("view");
            views = replace(&views, i, v);
        }
    }
    vec![
        ("plain pages", plain),
        ("string views", parquet_bytes(&[views])),
    ]
}

#[tokio::test]
async fn text_decoded_by_every_path_breaks_the_same_rules_and_stores_the_same_rows() {
    let batches = synth("reoffending_cohort", &["kent"]);
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat");
    let edits: Vec<(&str, Option<&str>, usize, &str)> = vec![
        ("sex", Some("x"), 3, "enum"),
        ("cohort_quarter", Some("2024Q5"), 5, "format"),
        ("pfa_code", Some("E23999999"), 2, "reference"),
        (
            "probation_region_code",
            Some("N56"),
            6,
            "pfa_in_probation_region",
        ),
        ("person_id", Some("ABC"), 7, "format"),
        ("adult_juvenile", None, 1, "not_null"),
    ];
    for (column, value, row, rule) in edits {
        let bad = set_text(&batch, column, row, value);
        for (how, bytes) in other_encodings(&bad) {
            let f = fixture();
            let v = violations(
                upload(
                    &f.store,
                    "reoffending_cohort",
                    Mode::Append,
                    "tester",
                    ScopeFilter::All,
                    bytes,
                )
                .await,
            );
            let hit = v.violations.iter().find(|x| x.rule == rule);
            let hit = hit.unwrap_or_else(|| panic!("{how} {column}/{rule}: {v:?}"));
            assert_eq!(hit.row, Some(row as u64 + 1), "{how} {column}/{rule}");
            assert_eq!(hit.column.as_deref(), Some(column), "{how} {column}/{rule}");
            assert_eq!(
                f.store
                    .latest_version("reoffending_cohort")
                    .await
                    .expect("version"),
                None,
                "{how}: nothing committed"
            );
        }
    }
    let f = fixture();
    for (how, bytes) in other_encodings(&batch) {
        let done = upload(
            &f.store,
            "reoffending_cohort",
            Mode::Append,
            "tester",
            ScopeFilter::All,
            bytes,
        )
        .await
        .unwrap_or_else(|e| panic!("{how}: {e:?}"));
        assert_eq!(done.rows, batch.num_rows() as u64, "{how}");
    }
    // Both uploads hold the same rows, each value where it was.
    let sex = batch.column_by_name("sex").expect("sex").as_string::<i32>();
    let female = sex.iter().filter(|v| *v == Some("female")).count();
    let stored = count_rows(
        &f.store,
        "reoffending_cohort",
        None,
        "WHERE sex = 'female' AND pfa_code = 'E23000032'",
    )
    .await;
    assert_eq!(stored, 2 * female);
    assert_eq!(
        count_rows(&f.store, "reoffending_cohort", None, "").await,
        2 * batch.num_rows()
    );
}
