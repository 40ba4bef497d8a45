//! The deployment recipes in `deploy/` are valid for the tools that will read
//! them, and give a drain the time it needs: the systemd unit passes
//! `systemd-analyze verify`, the Kubernetes example passes
//! `kubernetes-validate --strict` (both installed by `integration/tools.sh`),
//! and the configuration each carries is one `baker-mq validate` accepts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BAKER: &str = env!("CARGO_BIN_EXE_baker-mq");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number after `key` on the line that starts with it (trimmed), in
/// `text`.
fn number_after(text: &str, key: &str) -> u64 {
    let line = (text.lines().map(str::trim))
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} line"));
    let digits: String = (line[key.len()..].chars())
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {line:?}"))
}

/// `baker-mq --config <config> validate` with `env`: what it printed.
fn validate(config: &Path, env: &[(String, String)]) -> String {
    let out = Command::new(BAKER)
        .arg("--config")
        .arg(config)
        .arg("validate")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("baker-mq runs");
    assert!(out.status.success(), "{}", text(&out));
    text(&out)
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_and_outlasts_the_drain() {
    let unit = read("systemd/baker-mq.service");
    // The unit names where the binary is installed; here it is the one built.
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().join("baker-mq.service");
    std::fs::write(&here, unit.replace("/usr/local/bin/baker-mq", BAKER)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&here)
        .output()
        .expect("systemd-analyze runs (integration/tools.sh installs it)");
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );

    let config = deploy("systemd/baker-mq.toml");
    let drain = number_after(&read("systemd/baker-mq.toml"), "drain_timeout_secs");
    let stop = number_after(&unit, "TimeoutStopSec=");
    assert!(
        stop > drain + 1,
        "TimeoutStopSec {stop} must outlast the drain ({drain} s and 1 s for routers to see it)"
    );
    let said = validate(&config, &[]);
    assert!(said.contains("registers orders/orders-host1"), "{said}");
}

#[test]
fn the_kubernetes_example_validates_and_gives_the_drain_time_before_the_kill() {
    let manifest = deploy("kubernetes/orders.yaml");
    let validator = std::env::var("BAKER_TEST_KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| "/var/tmp/baker-brokers/tools-venv/bin/kubernetes-validate".to_owned());
    let out = Command::new(&validator)
        .args(["--strict", "--quiet"])
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("{validator}: {e} (integration/tools.sh installs it)"));
    assert!(out.status.success(), "kubernetes-validate: {}", text(&out));

    let yaml = read("kubernetes/orders.yaml");
    // The ConfigMap's baker-mq.toml: the indented block after its key.
    let toml: String = (yaml.lines())
        .skip_while(|l| !l.trim_start().starts_with("baker-mq.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    let drain = number_after(&toml, "drain_timeout_secs");
    let grace = number_after(&yaml, "terminationGracePeriodSeconds:");
    assert!(
        grace >= drain + 1 + 30,
        "terminationGracePeriodSeconds {grace} must hold the drain ({drain} s, 1 s for routers) \
         and time for the application and Baker to stop"
    );

    // The sidecar's settings: the file and its BAKER_* variables, with the
    // pod's name filled in as Kubernetes does.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baker-mq.toml");
    std::fs::write(&config, &toml).unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "a-token-of-enough-length-for-baker\n").unwrap();
    let mut env = Vec::new();
    let mut lines = yaml.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("- name: BAKER_") else {
            continue;
        };
        let value = (lines.next().and_then(|l| l.strip_prefix("value: ")))
            .unwrap_or_else(|| panic!("BAKER_{name} has no value"))
            .trim_matches('"')
            .replace("$(POD_NAME)", "orders-7d9f-x2x4k");
        env.push((format!("BAKER_{name}"), value));
    }
    for (name, value) in [
        ("BAKER_ADMIN_TOKEN_FILE", &token),
        ("BAKER_STATE_DIR", &dir.path().to_owned()),
    ] {
        let slot = env.iter_mut().find(|(n, _)| n == name);
        slot.unwrap_or_else(|| panic!("the sidecar sets {name}")).1 = value.display().to_string();
    }
    let said = validate(&config, &env);
    assert!(
        said.contains("registers orders/orders-7d9f-x2x4k"),
        "{said}"
    );
    assert!(said.contains("client_id=baker-orders-7d9f-x2x4k"), "{said}");
}
