//! The shipped policies, compiled in so `concordat demo` works from any directory.

/// File name and text of every file in `policies/`.
pub const POLICIES: [(&str, &str); 16] = [
    (
        "partners.toml",
        include_str!("../../../policies/partners.toml"),
    ),
    (
        "audit-operator.toml",
        include_str!("../../../policies/audit-operator.toml"),
    ),
    (
        "audit-panels.toml",
        include_str!("../../../policies/audit-panels.toml"),
    ),
    (
        "court-timeliness-deposit.toml",
        include_str!("../../../policies/court-timeliness-deposit.toml"),
    ),
    (
        "court-timeliness-pcc.toml",
        include_str!("../../../policies/court-timeliness-pcc.toml"),
    ),
    (
        "efficiency-panels.toml",
        include_str!("../../../policies/efficiency-panels.toml"),
    ),
    (
        "efficiency-pcc.toml",
        include_str!("../../../policies/efficiency-pcc.toml"),
    ),
    (
        "force-context-deposit.toml",
        include_str!("../../../policies/force-context-deposit.toml"),
    ),
    (
        "most-similar-groups.toml",
        include_str!("../../../policies/most-similar-groups.toml"),
    ),
    (
        "force-performance-deposit.toml",
        include_str!("../../../policies/force-performance-deposit.toml"),
    ),
    (
        "force-performance-hmicfrs.toml",
        include_str!("../../../policies/force-performance-hmicfrs.toml"),
    ),
    (
        "force-performance-home-office.toml",
        include_str!("../../../policies/force-performance-home-office.toml"),
    ),
    (
        "force-performance-pcc.toml",
        include_str!("../../../policies/force-performance-pcc.toml"),
    ),
    (
        "probation-pcc-reoffending-mou.toml",
        include_str!("../../../policies/probation-pcc-reoffending-mou.toml"),
    ),
    (
        "probation-reoffending-deposit.toml",
        include_str!("../../../policies/probation-reoffending-deposit.toml"),
    ),
    (
        "reference-data.toml",
        include_str!("../../../policies/reference-data.toml"),
    ),
];

/// Writes the shipped policies into a directory.
pub fn write_policies(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in POLICIES {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_file_in_policies_is_shipped() {
        let dir = &format!(
            "{}/../../policies",
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
        );
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("policies")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut shipped: Vec<String> = super::POLICIES
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        shipped.sort();
        assert_eq!(on_disk, shipped);
    }
}
