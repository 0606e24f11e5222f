//! Parquet files made from synthetic data.

/// One dataset for some forces, as Parquet bytes.
pub fn parquet(dataset: &str, forces: &[&str], scale: f64) -> Vec<u8> {
    let batches = concordat_synth::Synth::new(scale, 11)
        .only(forces)
        .batches(dataset);
    concordat_synth::parquet_bytes(&batches).expect("parquet")
}
