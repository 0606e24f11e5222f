//! The `concordat` binary's offline commands, run as a user would run them.

use std::path::Path;
use std::process::Command;

fn concordat(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concordat"))
        .args(args)
        .output()
        .expect("run concordat")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn synth_writes_every_partner_dataset_deterministically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        let o = concordat(&[
            "synth",
            "--out",
            out.to_str().expect("utf8"),
            "--scale",
            "0.01",
            "--seed",
            "7",
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    for d in [
        "reoffending_cohort",
        "court_timeliness",
        "force_performance",
        "force_resources",
        "force_context",
    ] {
        let x = std::fs::read(a.join(format!("{d}.parquet"))).expect("written");
        let y = std::fs::read(b.join(format!("{d}.parquet"))).expect("written");
        assert!(x.starts_with(b"PAR1"), "{d} is Parquet");
        assert_eq!(x, y, "{d}: the same seed gives the same bytes");
    }
    let o = concordat(&[
        "synth",
        "--out",
        a.to_str().expect("utf8"),
        "--scale",
        "0.01",
        "--force",
        "atlantis",
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("atlantis"));
}

#[test]
fn policy_check_accepts_the_shipped_set_and_explains_a_broken_one() {
    let shipped = &format!(
        "{}/../../policies",
        std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
    );
    let o = concordat(&["policy", "check", "--dir", shipped]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("probation-pcc-reoffending-mou"));
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(shipped).expect("dir") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, dir.path().join(p.file_name().expect("name"))).expect("copy");
    }
    let bad = dir.path().join("court-timeliness-pcc.toml");
    let t = std::fs::read_to_string(&bad)
        .expect("read")
        .replace("scope = \"own_force_area\"", "scope = \"everywhere\"");
    std::fs::write(&bad, t).expect("write");
    let o = concordat(&[
        "policy",
        "check",
        "--dir",
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("court-timeliness-pcc.toml") && err.contains("scope"),
        "{err}"
    );
}

#[test]
fn token_issue_signs_for_known_partners_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys");
    std::fs::write(keys.join("secret"), "0123456789abcdef0123456789abcdef").expect("secret");
    let policies = Path::new(
        &std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("../../policies");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("policies_dir = \"{}\"\n[auth]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\ndev_secret_file = \"keys/secret\"\n", policies.display())).expect("cfg");
    let cfg = cfg.to_str().expect("utf8");
    let o = concordat(&[
        "token",
        "issue",
        "--config",
        cfg,
        "--partner",
        "pcc-kent",
        "--role",
        "analyst",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim().split('.').count(), 3, "a JWT");
    let o = concordat(&[
        "token",
        "issue",
        "--config",
        cfg,
        "--partner",
        "pcc-atlantis",
        "--role",
        "analyst",
    ]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("unknown partner"));
    let o = concordat(&[
        "token",
        "issue",
        "--config",
        cfg,
        "--partner",
        "pcc-kent",
        "--role",
        "root",
    ]);
    assert!(!o.status.success());
}

#[test]
fn personal_access_tokens_are_created_listed_and_revoked_and_kept_only_as_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys");
    std::fs::write(keys.join("secret"), "0123456789abcdef0123456789abcdef").expect("secret");
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("policies_dir = \"{}\"\n[auth]\nissuer = \"i\"\naudience = \"a\"\nalgorithms = [\"HS256\"]\ndev_secret_file = \"keys/secret\"\n", policies.display())).expect("cfg");
    let cfg = cfg.to_str().expect("utf8");
    let o = concordat(&[
        "token",
        "create",
        "--config",
        cfg,
        "--partner",
        "pcc-kent",
        "--role",
        "analyst",
        "--purpose",
        "performance-scrutiny",
        "--days",
        "30",
        "--name",
        "power bi",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let token = text(&o.stdout).trim().to_owned();
    assert!(token.starts_with("cct_"), "{token}");
    let secret = token.rsplit('_').next().expect("secret").to_owned();
    let id = token.split('_').nth(1).expect("id").to_owned();
    let register =
        std::fs::read_to_string(dir.path().join("data/tokens/tokens.log")).expect("register");
    assert!(
        register.contains(&id) && !register.contains(&secret),
        "only the hash is kept"
    );
    let o = concordat(&["token", "list", "--config", cfg, "--partner", "pcc-kent"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains(&id) && text(&o.stdout).contains("performance-scrutiny"));
    let o = concordat(&["token", "list", "--config", cfg, "--partner", "pcc-essex"]);
    assert!(!text(&o.stdout).contains(&id));
    for (args, why) in [
        (vec!["--purpose", "curiosity"], "unknown purpose"),
        (vec!["--days", "400"], "days"),
    ] {
        let mut all = vec![
            "token",
            "create",
            "--config",
            cfg,
            "--partner",
            "pcc-kent",
            "--role",
            "analyst",
        ];
        all.extend(args);
        let o = concordat(&all);
        assert!(!o.status.success(), "{why}");
    }
    let o = concordat(&["token", "revoke", "--config", cfg, &id]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("REVOKED"));
    let o = concordat(&["token", "revoke", "--config", cfg, &id]);
    assert!(!o.status.success(), "revoked twice");
}
