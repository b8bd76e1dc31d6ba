//! The command line: `check-config` accepts the seed's sample and rejects each broken fixture
//! with a message naming the file and the field (the table in tests/configs/README.md).

use std::process::Command;

fn check_config(path: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["check-config", path])
        .env_remove("HIVE_REDIS_URL")
        .output()
        .expect("run the binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_config_accepts_the_seed_sample_and_the_local_config() {
    for path in ["config/config.json", "config/hive-local.json"] {
        let (ok, text) = check_config(path);
        assert!(ok, "{path}: {text}");
        assert!(text.contains("ok"), "{text}");
    }
}

#[test]
fn check_config_rejects_broken_configs_naming_the_field() {
    let table = std::fs::read_to_string("tests/configs/README.md").expect("fixture table");
    let mut checked = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(|c| c.trim().trim_matches('`')).collect();
        let (file, field, word) = (cells[1], cells[2], cells[3]);
        let path = format!("tests/configs/{file}");
        let (ok, text) = check_config(&path);
        assert!(!ok, "{path} was accepted");
        assert!(
            text.contains(&path),
            "{path}: message names the file: {text}"
        );
        assert!(
            text.contains(field),
            "{path}: message names {field}: {text}"
        );
        assert!(text.contains(word), "{path}: message says {word:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "one clean line: {text}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} fixtures checked");
}

#[test]
fn environment_overrides_are_validated() {
    let out = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["check-config", "config/config.json"])
        .env("HIVE_SERVER_ID", "not-an-address")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("HIVE_SERVER_ID"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["check-config", "config/config.json"])
        .env("HIVE_REDIS_URL", "redis://10.1.2.3:7000")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("redis://10.1.2.3:7000"));
}

#[test]
fn serve_with_a_bad_config_stops_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_dhcp-hive-mind"))
        .args(["serve", "--config", "tests/configs/bad-dynend-outside.json"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("subnets[0].dynEnd"), "{err}");
}
