//! Column chunks of coded text (enums, references, periods) written from the keys the
//! decoder already gave them.
//!
//! The upload's coded columns are decoded as dictionaries. Parquet-rs's writer would
//! hash every row's text into a new dictionary and compare it for the minimum and
//! maximum (more than half of the encoding threads' time); here each distinct value is
//! looked up once per batch, the rows become dictionary indices by an array lookup, and
//! the chunk is written as parquet-rs writes a dictionary-encoded chunk: a PLAIN dictionary
//! page, then data pages of RLE / bit-packed hybrid indices (and definition levels for a
//! nullable column), with the chunk's statistics, its offset index and, for `paged`
//! files, its column index. The chunk is then spliced into the row group by parquet-rs
//! ([`parquet::file::writer::SerializedRowGroupWriter::append_column`]).

use std::collections::HashMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::Int32Type;
use bytes::Bytes;
use parquet::basic::{Compression, Encoding, Type as PhysicalType};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::ByteArray;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ColumnChunkMetaData, ColumnIndexBuilder, OffsetIndexBuilder};
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// Not yet given an index in the chunk's dictionary.
const UNSEEN: u32 = u32::MAX;

/// One row group's chunk of a coded text column, as it is written.
pub(crate) struct CodedChunk {
    descr: ColumnDescPtr,
    /// Rows per data page.
    page_rows: usize,
    /// Whether the chunk gets a column index (every chunk gets an offset index, as
    /// parquet-rs writes one for every chunk).
    paged: bool,
    /// The chunk's dictionary, in the order values were first met.
    values: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
    /// Dictionary index of each non-null row.
    ids: Vec<u32>,
    /// Whether each row is valid, for a nullable column.
    valid: Vec<bool>,
    rows: usize,
}

impl CodedChunk {
    pub(crate) fn new(descr: ColumnDescPtr, page_rows: usize, paged: bool) -> CodedChunk {
        CodedChunk {
            descr,
            page_rows: page_rows.max(1),
            paged,
            values: Vec::new(),
            index: HashMap::new(),
            ids: Vec::new(),
            valid: Vec::new(),
            rows: 0,
        }
    }

    /// Whether an array is written by this kind of chunk.
    pub(crate) fn takes(a: &dyn Array) -> bool {
        matches!(a.data_type(), arrow::datatypes::DataType::Dictionary(k, v)
            if **k == arrow::datatypes::DataType::Int32 && **v == arrow::datatypes::DataType::Utf8)
    }

    fn nullable(&self) -> bool {
        self.descr.max_def_level() > 0
    }

    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.index.get(text) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(text.into());
        self.index.insert(text.into(), id);
        id
    }

    /// Adds the rows of a dictionary array of text.
    pub(crate) fn push(&mut self, a: &ArrayRef) -> Result<()> {
        let bad = || ParquetError::General("a coded column is not a dictionary of text".into());
        let d = a.as_dictionary_opt::<Int32Type>().ok_or_else(bad)?;
        let text = d.values().as_string_opt::<i32>().ok_or_else(bad)?;
        // Each dictionary entry is looked up once, the first time a row uses it.
        let mut map = vec![UNSEEN; text.len()];
        let nulls = d.logical_nulls();
        let nullable = self.nullable();
        let keys = d.keys().values();
        let Some(nulls) = nulls else {
            // No nulls: the entries used are found in one pass over the keys, then every
            // row is mapped by an array lookup.
            let mut used = vec![false; text.len()];
            for &key in keys.iter() {
                *usize::try_from(key)
                    .ok()
                    .and_then(|k| used.get_mut(k))
                    .ok_or_else(bad)? = true;
            }
            for (k, slot) in map.iter_mut().enumerate() {
                if used[k] {
                    *slot = self.intern(text.value(k));
                }
            }
            self.ids.extend(keys.iter().map(|&k| map[k as usize]));
            if nullable {
                self.valid.extend(std::iter::repeat_n(true, keys.len()));
            }
            self.rows += keys.len();
            return Ok(());
        };
        if !nullable {
            return Err(ParquetError::General(
                "a required column holds nulls".into(),
            ));
        }
        self.ids.reserve(d.len());
        for (row, &key) in keys.iter().enumerate() {
            let valid = nulls.is_valid(row);
            self.valid.push(valid);
            if !valid {
                continue;
            }
            let k = usize::try_from(key).map_err(|_| bad())?;
            let slot = map.get_mut(k).ok_or_else(bad)?;
            if *slot == UNSEEN {
                let value = text.value(k);
                *slot = self.intern(value);
            }
            self.ids.push(*slot);
        }
        self.rows += d.len();
        Ok(())
    }

    /// Rows added so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// The encoded chunk (starting at offset 0) and what parquet-rs needs to splice it
    /// into a row group.
    pub(crate) fn finish(mut self) -> Result<(Bytes, ColumnCloseResult)> {
        let width = bit_width(self.values.len().saturating_sub(1));
        // The dictionary is written in byte order, so a row's index is its value's rank:
        // a page's minimum and maximum are those of its indices.
        let mut order: Vec<u32> = (0..self.values.len() as u32).collect();
        order.sort_unstable_by(|a, b| {
            self.values[*a as usize]
                .as_bytes()
                .cmp(self.values[*b as usize].as_bytes())
        });
        let mut rank = vec![0u32; self.values.len()];
        for (r, id) in order.iter().enumerate() {
            rank[*id as usize] = r as u32;
        }
        for id in &mut self.ids {
            *id = rank[*id as usize];
        }
        let bytes_of = |r: u32| self.values[order[r as usize] as usize].as_bytes().to_vec();

        let mut sink = TrackedWrite::new(Vec::new());
        let mut pages = SerializedPageWriter::new(&mut sink);
        let mut dictionary = Vec::new();
        for id in &order {
            let v = &self.values[*id as usize];
            dictionary.extend_from_slice(&(v.len() as u32).to_le_bytes());
            dictionary.extend_from_slice(v.as_bytes());
        }
        let size = dictionary.len();
        pages.write_page(CompressedPage::new(
            Page::DictionaryPage {
                buf: Bytes::from(dictionary),
                num_values: self.values.len() as u32,
                encoding: Encoding::PLAIN,
                is_sorted: true,
            },
            size,
        ))?;

        let mut column_index = ColumnIndexBuilder::new(PhysicalType::BYTE_ARRAY);
        let mut offset_index = OffsetIndexBuilder::new();
        let mut data_offset = None;
        let (mut next_id, mut first_row) = (0usize, 0usize);
        let (mut low, mut high) = (u32::MAX, 0u32);
        while first_row < self.rows || (self.rows == 0 && data_offset.is_none()) {
            let page_rows = self.page_rows.min(self.rows - first_row);
            let mut buf = Vec::with_capacity(page_rows * usize::from(width) / 8 + 64);
            let mut nulls = 0usize;
            if self.nullable() {
                let levels: Vec<u32> = self.valid[first_row..first_row + page_rows]
                    .iter()
                    .map(|v| u32::from(*v))
                    .collect();
                nulls = levels.iter().filter(|l| **l == 0).count();
                let mut encoded = Vec::new();
                hybrid(&levels, 1, &mut encoded);
                buf.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
                buf.extend_from_slice(&encoded);
            }
            let ids = &self.ids[next_id..next_id + page_rows - nulls];
            buf.push(width);
            hybrid(ids, width, &mut buf);
            let page_low = ids.iter().copied().min().unwrap_or(u32::MAX);
            let page_high = ids.iter().copied().max().unwrap_or(0);
            if ids.is_empty() {
                column_index.append(true, Vec::new(), Vec::new(), nulls as i64);
            } else {
                column_index.append(false, bytes_of(page_low), bytes_of(page_high), nulls as i64);
                low = low.min(page_low);
                high = high.max(page_high);
            }
            let size = buf.len();
            let spec = pages.write_page(CompressedPage::new(
                Page::DataPage {
                    buf: Bytes::from(buf),
                    num_values: page_rows as u32,
                    encoding: Encoding::RLE_DICTIONARY,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                },
                size,
            ))?;
            data_offset.get_or_insert(spec.offset as i64);
            offset_index.append_row_count(page_rows as i64);
            offset_index.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
            next_id += page_rows - nulls;
            first_row += page_rows;
        }
        pages.close()?;
        let nulls = (self.rows - self.ids.len()) as u64;
        let (min, max) = if self.ids.is_empty() {
            (None, None)
        } else {
            (
                Some(ByteArray::from(bytes_of(low))),
                Some(ByteArray::from(bytes_of(high))),
            )
        };
        let total = sink.bytes_written() as i64;
        let metadata = ColumnChunkMetaData::builder(self.descr.clone())
            .set_compression(Compression::UNCOMPRESSED)
            .set_encodings(vec![
                Encoding::PLAIN,
                Encoding::RLE,
                Encoding::RLE_DICTIONARY,
            ])
            .set_num_values(self.rows as i64)
            .set_total_compressed_size(total)
            .set_total_uncompressed_size(total)
            .set_dictionary_page_offset(Some(0))
            .set_data_page_offset(data_offset.unwrap_or(0))
            .set_statistics(Statistics::ByteArray(ValueStatistics::new(
                min,
                max,
                None,
                Some(nulls),
                false,
            )))
            .build()?;
        let close = ColumnCloseResult {
            bytes_written: total as u64,
            rows_written: self.rows as u64,
            metadata,
            bloom_filter: None,
            column_index: if self.paged {
                Some(column_index.build()?)
            } else {
                None
            },
            offset_index: Some(offset_index.build()),
        };
        Ok((Bytes::from(sink.into_inner()?), close))
    }
}

/// Bits needed for values up to `max`.
fn bit_width(max: usize) -> u8 {
    (usize::BITS - max.leading_zeros()) as u8
}

/// Appends `values` in parquet's RLE / bit-packed hybrid encoding of `width` bits:
/// runs of 8 or more equal values (after the bit-packed values before them fill whole
/// groups of 8) as RLE runs, everything else bit-packed.
pub(crate) fn hybrid(values: &[u32], width: u8, out: &mut Vec<u8>) {
    let mut literal_start = 0;
    let mut i = 0;
    while i < values.len() {
        let v = values[i];
        let mut end = i + 1;
        while end < values.len() && values[end] == v {
            end += 1;
        }
        // Values of the run that complete the pending bit-packed group.
        let fill = (8 - (i - literal_start) % 8) % 8;
        if end - i >= fill + 8 {
            let split = i + fill;
            bit_packed(&values[literal_start..split], width, out);
            uleb(((end - split) as u64) << 1, out);
            let value_bytes = usize::from(width).div_ceil(8);
            out.extend_from_slice(&v.to_le_bytes()[..value_bytes]);
            literal_start = end;
        }
        i = end;
    }
    bit_packed(&values[literal_start..], width, out);
}

/// Bit-packed runs of at most 63 groups of 8 values (the last group padded with zeros).
fn bit_packed(values: &[u32], width: u8, out: &mut Vec<u8>) {
    for run in values.chunks(63 * 8) {
        let groups = run.len().div_ceil(8);
        uleb(((groups as u64) << 1) | 1, out);
        out.reserve(groups * usize::from(width) + 16);
        let mut eights = run.chunks_exact(8);
        for group in &mut eights {
            pack8(group, width, out);
        }
        let rest = eights.remainder();
        if !rest.is_empty() {
            let mut padded = [0u32; 8];
            padded[..rest.len()].copy_from_slice(rest);
            pack8(&padded, width, out);
        }
    }
}

/// Appends eight values of `width` bits packed, least significant bit first: `width`
/// bytes.
fn pack8(group: &[u32], width: u8, out: &mut Vec<u8>) {
    let w = u32::from(width);
    if w <= 16 {
        let mut acc = 0u128;
        for (i, v) in group.iter().enumerate() {
            acc |= u128::from(*v) << (i as u32 * w);
        }
        // All sixteen bytes are stored at once (no copy of a variable length), then the
        // unused ones dropped.
        let len = out.len();
        out.extend_from_slice(&acc.to_le_bytes());
        out.truncate(len + usize::from(width));
    } else {
        let (mut acc, mut bits) = (0u64, 0u32);
        for v in group {
            acc |= u64::from(*v) << bits;
            bits += w;
            while bits >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        }
    }
}

fn uleb(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, AsArray, DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use parquet::file::page_index::column_index::ColumnIndexMetaData;
    use parquet::file::reader::FileReader;
    use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};
    use rand::{Rng, SeedableRng};

    use crate::datafile::Sink;

    /// Rows of text (or null) drawn from `distinct` values, in runs of random length, and
    /// cut into batches each with a dictionary of its own (unused and repeated entries
    /// included, in a shuffled order), as a decoder may give them.
    fn batches(
        rng: &mut rand::rngs::StdRng,
        rows: usize,
        distinct: usize,
        nulls: bool,
    ) -> Vec<(ArrayRef, Vec<Option<String>>)> {
        let mut out = Vec::new();
        let mut left = rows;
        while left > 0 {
            let n = rng.random_range(1..=left.min(30_000));
            left -= n;
            let mut dictionary: Vec<String> =
                (0..distinct).map(|v| format!("value {v:05}")).collect();
            dictionary.push("value 00000".into());
            dictionary.push("never used".into());
            let mut order: Vec<usize> = (0..dictionary.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let dictionary: Vec<String> = order.iter().map(|i| dictionary[*i].clone()).collect();
            let mut keys: Vec<Option<i32>> = Vec::with_capacity(n);
            while keys.len() < n {
                let run = if rng.random_bool(0.3) {
                    rng.random_range(1..200)
                } else {
                    rng.random_range(1..4)
                };
                let key = if nulls && rng.random_bool(0.1) {
                    None
                } else {
                    let mut k = rng.random_range(0..dictionary.len());
                    while dictionary[k] == "never used" {
                        k = rng.random_range(0..dictionary.len());
                    }
                    Some(k as i32)
                };
                for _ in 0..run.min(n - keys.len()) {
                    keys.push(key);
                }
            }
            let expected = keys
                .iter()
                .map(|k| k.map(|k| dictionary[k as usize].clone()))
                .collect();
            let array = DictionaryArray::<Int32Type>::try_new(
                Int32Array::from(keys),
                Arc::new(StringArray::from(dictionary)),
            )
            .expect("dictionary");
            out.push((Arc::new(array) as ArrayRef, expected));
        }
        out
    }

    #[test]
    fn coded_chunks_read_back_as_the_text_written_with_exact_statistics_and_page_index() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (rows, distinct, nullable) in [
            (1, 1, false),
            (5, 1, false),
            (70_000, 1, false),
            (3_000, 2, true),
            (50_000, 3, false),
            (150_000, 43, true),
            (45_000, 300, false),
            (30_000, 20_000, true),
        ] {
            let dir = tempfile::tempdir().expect("dir");
            let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, nullable)]));
            let mut sink = Sink::new(dir.path(), schema, Vec::new(), "part");
            let mut expected = Vec::new();
            for (i, (array, text)) in batches(&mut rng, rows, distinct, nullable)
                .into_iter()
                .enumerate()
            {
                sink.write(vec![array]).expect("write");
                if i % 3 == 2 {
                    sink.end_row_group().expect("group");
                }
                expected.extend(text);
            }
            let files = sink.finish().expect("finish");
            let mut read = Vec::new();
            for file in &files {
                let path = dir.path().join(&file.name);
                let arrow = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(&path).expect("file"),
                )
                .expect("reader");
                assert_eq!(arrow.schema().field(0).data_type(), &DataType::Utf8);
                let mut in_file: Vec<Option<String>> = Vec::new();
                for b in arrow.build().expect("build") {
                    let b = b.expect("batch");
                    in_file.extend(
                        b.column(0)
                            .as_string::<i32>()
                            .iter()
                            .map(|v| v.map(str::to_owned)),
                    );
                }
                // Every statistic is exact: the row groups' ranges, nulls and page index.
                let options = ReadOptionsBuilder::new().with_page_index().build();
                let reader = SerializedFileReader::new_with_options(
                    std::fs::File::open(&path).expect("file"),
                    options,
                )
                .expect("reader");
                let meta = reader.metadata();
                let mut first = 0usize;
                for (g, group) in meta.row_groups().iter().enumerate() {
                    let n = group.num_rows() as usize;
                    let rows = &in_file[first..first + n];
                    let stats = group.column(0).statistics().expect("statistics");
                    let present: Vec<&String> = rows.iter().flatten().collect();
                    let text =
                        |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).expect("utf8"));
                    assert_eq!(
                        text(stats.min_bytes_opt()),
                        present.iter().min().map(|s| s.to_string())
                    );
                    assert_eq!(
                        text(stats.max_bytes_opt()),
                        present.iter().max().map(|s| s.to_string())
                    );
                    assert_eq!(stats.null_count_opt(), Some((n - present.len()) as u64));
                    let pages = &meta.offset_index().expect("offset index")[g][0];
                    let index = meta.column_index().map(|c| &c[g][0]);
                    let mut page_first = 0usize;
                    for (p, location) in pages.page_locations().iter().enumerate() {
                        let page_end = pages
                            .page_locations()
                            .get(p + 1)
                            .map_or(n, |l| l.first_row_index as usize);
                        assert_eq!(location.first_row_index as usize, page_first);
                        if let Some(ColumnIndexMetaData::BYTE_ARRAY(index)) = index {
                            let in_page: Vec<&String> =
                                rows[page_first..page_end].iter().flatten().collect();
                            let min = index
                                .min_value(p)
                                .map(|b| String::from_utf8(b.to_vec()).expect("utf8"));
                            assert_eq!(
                                min,
                                in_page.iter().min().map(|s| s.to_string()),
                                "page {p}"
                            );
                            let max = index
                                .max_value(p)
                                .map(|b| String::from_utf8(b.to_vec()).expect("utf8"));
                            assert_eq!(
                                max,
                                in_page.iter().max().map(|s| s.to_string()),
                                "page {p}"
                            );
                        }
                        page_first = page_end;
                    }
                    assert_eq!(page_first, n);
                    first += n;
                }
                read.extend(in_file);
            }
            assert_eq!(
                read.len(),
                expected.len(),
                "{rows} rows of {distinct} values"
            );
            assert!(
                read == expected,
                "{rows} rows of {distinct} values read back differently"
            );
        }
    }

    /// Bit-packing value by value, as the format describes it.
    fn packed_one_by_one(values: &[u32], width: u8) -> Vec<u8> {
        let mut out = Vec::new();
        for run in values.chunks(63 * 8) {
            let groups = run.len().div_ceil(8);
            super::uleb(((groups as u64) << 1) | 1, &mut out);
            let (mut acc, mut bits) = (0u64, 0u32);
            for k in 0..groups * 8 {
                acc |= u64::from(run.get(k).copied().unwrap_or(0)) << bits;
                bits += u32::from(width);
                while bits >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    bits -= 8;
                }
            }
        }
        out
    }

    #[test]
    fn bit_packing_eight_at_a_time_matches_packing_one_by_one_at_every_width() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for width in 0..=24u8 {
            for len in [0, 1, 7, 8, 9, 63 * 8, 63 * 8 + 5, 1_500] {
                let values: Vec<u32> = (0..len)
                    .map(|_| {
                        if width == 0 {
                            0
                        } else {
                            rng.random_range(0..(1u64 << width)) as u32
                        }
                    })
                    .collect();
                let mut fast = Vec::new();
                super::bit_packed(&values, width, &mut fast);
                assert_eq!(
                    fast,
                    packed_one_by_one(&values, width),
                    "width {width}, {len} values"
                );
            }
        }
    }

    /// The hybrid encoding found run by run, value by value.
    fn hybrid_run_by_run(values: &[u32], width: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut literal_start, mut i) = (0, 0);
        while i < values.len() {
            let v = values[i];
            let mut end = i + 1;
            while end < values.len() && values[end] == v {
                end += 1;
            }
            let fill = (8 - (i - literal_start) % 8) % 8;
            if end - i >= fill + 8 {
                let split = i + fill;
                out.extend(packed_one_by_one(&values[literal_start..split], width));
                super::uleb(((end - split) as u64) << 1, &mut out);
                out.extend_from_slice(&v.to_le_bytes()[..usize::from(width).div_ceil(8)]);
                literal_start = end;
            }
            i = end;
        }
        out.extend(packed_one_by_one(&values[literal_start..], width));
        out
    }

    #[test]
    fn the_hybrid_encoding_is_the_same_as_finding_every_run_value_by_value() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for case in 0..400 {
            let width = rng.random_range(1..=12u8);
            let mut values = Vec::new();
            while values.len() < rng.random_range(0..3_000) {
                let run = match case % 3 {
                    0 => rng.random_range(1..4),
                    1 => rng.random_range(1..20),
                    _ => rng.random_range(5..12),
                };
                let v = rng.random_range(0..(1u32 << width).min(4));
                values.extend(std::iter::repeat_n(v, run));
            }
            let mut fast = Vec::new();
            super::hybrid(&values, width, &mut fast);
            assert_eq!(fast, hybrid_run_by_run(&values, width), "case {case}");
        }
    }

    #[test]
    fn the_hybrid_encoding_packs_runs_and_literals_as_parquet_does() {
        let mut out = Vec::new();
        // Nine equal values: one RLE run (header 9 << 1, the value in one byte).
        super::hybrid(&[3; 9], 2, &mut out);
        assert_eq!(out, vec![18, 3]);
        // Three values then a run of thirteen: five of the run complete the group of
        // eight, bit-packed (1, 2, 3, 0, 0, 0, 0, 0); the other eight are an RLE run.
        out.clear();
        super::hybrid(
            &[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            2,
            &mut out,
        );
        assert_eq!(out, vec![3, 0b0011_1001, 0, 16, 0]);
        // A run too short for that stays bit-packed, the last group padded.
        out.clear();
        super::hybrid(&[1, 2, 3, 0, 0, 0, 0, 0, 0, 0], 2, &mut out);
        assert_eq!(out, vec![5, 0b0011_1001, 0, 0, 0]);
    }
}
