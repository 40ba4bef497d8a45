//! The binary's command line: clear errors for bad input, and the demo.

mod common;

use std::process::Command;

use common::BIN;

/// Runs the sidecar with a config file holding `text`; checks that it
/// fails, and returns what it printed and the file's path.
fn start_with_config(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baker.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (stderr, path.to_str().unwrap().to_owned())
}

#[test]
fn validate_checks_a_configuration_and_the_files_it_names_without_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let password = write("password", "s3cret\n");
    let good = write(
        "good.toml",
        &format!(
            "adapter = \"memory\"\n[[register]]\nservice = \"orders\"\nid = \"o1\"\n\
             [[brokers]]\nurl = \"nats://n1:4222\"\nusername = \"router\"\npassword_file = {password:?}\n"
        ),
    );
    let out = Command::new(BIN)
        .arg("validate")
        .arg("--config")
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("configuration OK") && stdout.contains("registers orders/o1"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret"), "{stdout}");
    for (name, text, key) in [
        (
            "missing-ca.toml",
            "[[brokers]]\nurl = \"nats://n1:4222\"\nca_file = \"/nonexistent/ca.pem\"\n",
            "brokers[0].ca_file",
        ),
        (
            "bad-broker.toml",
            "broker = \"kafka://k:9092\"\n",
            "key `broker`",
        ),
        (
            "open-directory.toml",
            "listen = \"0.0.0.0:7070\"\n",
            "key `listen`",
        ),
    ] {
        let path = write(name, text);
        let out = Command::new(BIN)
            .arg("validate")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} is refused");
        assert!(stderr.contains(key), "{name}: {stderr}");
    }
}

/// `baker-mq validate` on a config file holding `text`, with `env`.
fn validate(text: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baker.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(BIN);
    command.arg("validate").arg("--config").arg(&path);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

#[test]
fn broker_sections_read_their_secrets_and_a_section_that_cannot_work_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    let good = format!(
        "[[brokers]]\nurl = \"nats://N1:4222\"\nusername = \"router\"\npassword_file = {password:?}\n\
         [[brokers]]\nurl = \"nats://n2:4222\"\ntoken_env = \"BAKER_TEST_BROKERS_TOKEN\"\n"
    );
    let out = validate(&good, &[("BAKER_TEST_BROKERS_TOKEN", "s3cret-token")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!shown.contains("s3cret"), "{shown}");
    for (toml, expected) in [
            (
                "[[brokers]]\nurl = \"nats://u:p@n1:4222\"\n",
                "brokers[0].url`: must not carry credentials",
            ),
            (
                "[[brokers]]\nurl = \"kafka://k:9092\"\n",
                "brokers[0].url`: \"kafka://k:9092\" has a scheme no adapter",
            ),
            (
                "[[brokers]]\nurl = \"nats://n1:4222\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
                "brokers[0].password_file`: cannot read /nonexistent/pw",
            ),
            (
                "[[brokers]]\nurl = \"nats://n1:4222\"\npassword_env = \"BAKER_TEST_UNSET_VARIABLE\"\n",
                "brokers[0].password_env`: the environment variable BAKER_TEST_UNSET_VARIABLE is not set",
            ),
            (
                "[[brokers]]\nurl = \"nats://n1:4222\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "brokers[0].ca_file`: ca_file /nonexistent/ca.pem",
            ),
            (
                "[[brokers]]\nurl = \"nats://n1:4222\"\n[[brokers]]\nurl = \"NATS://n1:4222/\"\n",
                "brokers[1].url`: nats://n1:4222 has a section already",
            ),
            (
                "[[brokers]]\nurl = \"nats://n1:4222\"\nnkey_seed_file = \"Cargo.toml\"\n",
                "brokers[0]`: `nkey_seed_file`: not an NKey seed",
            ),
            (
                "[[brokers]]\nurl = \"mqtts://m:8883\"\ntoken_file = \"Cargo.toml\"\n",
                "brokers[0]`: the mqtt adapter has no use for `token`",
            ),
            (
                "[[brokers]]\nurl = \"memory://x\"\ntls = true\n",
                "brokers[0]`: the memory adapter has no use for `tls`",
            ),
        ] {
        let out = validate(toml, &[]);
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && error.contains(expected), "{toml}: {error}");
    }
}

#[test]
fn bad_config_file_names_the_key_and_the_file() {
    let (stderr, path) = start_with_config("adapter = \"nats\"\nmax_in_flihgt = 10\n");
    assert!(stderr.contains("max_in_flihgt"), "{stderr}");
    assert!(stderr.contains(&path), "{stderr}");
}

#[test]
fn malformed_config_value_names_the_key() {
    let (stderr, _) = start_with_config("[policy]\norders = \"fastest\"\n");
    assert!(
        stderr.contains("fastest") && stderr.contains("orders"),
        "{stderr}"
    );
}

#[test]
fn unknown_flag_fails_with_usage() {
    let out = Command::new(BIN).arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--frobnicate") && stderr.contains("Usage"),
        "{stderr}"
    );
}

#[test]
fn a_negative_number_is_refused_as_the_value_it_is() {
    let out = Command::new(BIN)
        .args(["--no-router", "--ttl", "-5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value '-5' for '--ttl <SECS>'"),
        "{stderr}"
    );
}

#[test]
fn a_variable_of_a_setting_moved_into_an_adapter_stops_the_start() {
    let out = Command::new(BIN)
        .env("BAKER_NATS_INGRESS", "jetstream")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BAKER_NATS_INGRESS") && stderr.contains("?ingress=jetstream"),
        "{stderr}"
    );
}

#[test]
fn bad_environment_variable_is_reported() {
    let out = Command::new(BIN)
        .env("BAKER_MAX_IN_FLIGHT", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("lots") && stderr.contains("max-in-flight"),
        "{stderr}"
    );
}

#[test]
fn demo_delivers_everything_without_a_broker() {
    let summary = demo_on("memory", None);
    assert!(summary.contains("duplicates 0;"), "{summary}");
}

/// `baker-mq demo --adapter ADAPTER [--broker URL]`: every step shown,
/// nothing lost. Returns the summary line.
fn demo_on(adapter: &str, broker: Option<&str>) -> String {
    let mut command = Command::new(BIN);
    command.args([
        "demo",
        "--phase-secs",
        "0.5",
        "--rate",
        "1000",
        "--adapter",
        adapter,
    ]);
    if let Some(broker) = broker {
        command.args(["--broker", broker]);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    assert!(summary.contains(", lost 0;"), "{summary}");
    for step in ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"] {
        assert!(stdout.contains(step), "step {step} missing from {stdout}");
    }
    summary.to_owned()
}

#[test]
fn the_demo_runs_the_same_story_on_nats() {
    demo_on("nats", Some(&common::nats_url()));
}

#[test]
fn the_demo_runs_the_same_story_on_rabbitmq() {
    let vhost = common::amqp::Vhost::create();
    demo_on("amqp", Some(&vhost.url()));
    // The run's inboxes and ingress queue are gone; the shared dead-letter
    // queue stays.
    let queues = vhost
        .queues("name")
        .unwrap_or_else(|e| panic!("RabbitMQ management API: {e}"));
    let names: Vec<&str> = queues.iter().filter_map(|q| q["name"].as_str()).collect();
    assert!(
        names.contains(&"baker-demo.dead-letters"),
        "the dead-letter queue is listed: {queues:?}"
    );
    let left: Vec<&str> = names
        .into_iter()
        .filter(|q| *q != "baker-demo.dead-letters")
        .collect();
    assert!(left.is_empty(), "the demo left queues behind: {left:?}");
}

#[test]
fn the_demo_runs_the_same_story_on_mosquitto() {
    demo_on("mqtt", Some(&common::mqtt::mqtt_url()));
}
