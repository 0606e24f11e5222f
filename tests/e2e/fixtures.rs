//! Parquet files made from synthetic data.

use parquet::arrow::ArrowWriter;

/// One dataset for some forces, as Parquet bytes.
pub fn parquet(dataset: &str, forces: &[&str], scale: f64) -> Vec<u8> {
    let batches = concordat_synth::Synth::new(scale, 11)
        .only(forces)
        .batches(dataset);
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), None).expect("writer");
    for b in &batches {
        w.write(b).expect("write");
    }
    w.close().expect("close");
    out
}
