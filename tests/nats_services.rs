//! The NATS Services API (ADR-32), as the official JavaScript service client
//! (`@nats-io/services`, installed by `integration/run.sh` into
//! `integration/clients`) sees it: each instance an agent registers is
//! listed once (routers do not answer), with its record's identity and the
//! service's ingress as its endpoint, until its agent stops; an agent told
//! not to announce is not listed; Baker's error replies carry the API's
//! error headers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What `integration/clients/services.mjs` printed.
fn ask(service: &str, id: &str, request: Option<&str>) -> serde_json::Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/clients");
    assert!(
        std::path::Path::new(dir).join("node_modules").exists(),
        "{dir}/node_modules is missing: run `npm ci --prefix integration/clients` (integration/run.sh does)"
    );
    let node = std::env::var("BAKER_TEST_NODE").unwrap_or_else(|_| "node".to_owned());
    let mut command = Command::new(node);
    command
        .current_dir(dir)
        .args(["services.mjs", &nats_url(), service, id]);
    command.args(request);
    let out = command.output().expect("node runs");
    assert!(
        out.status.success(),
        "services.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("services.mjs prints JSON")
}

fn ids(answers: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = (answers.as_array().expect("a list of answers").iter())
        .map(|a| a["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instances_are_listed_once_by_the_services_api_until_they_leave() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let ingress = Ingress::new();
        let service = unique("micro");
        let url = nats_url();
        let prefix = [
            "--ingress-prefix",
            &ingress.prefix,
            "--queue-group",
            &ingress.group,
        ];
        let spec = |id: &str, version: &str| {
            format!("service={service},id={id},version={version},zone=z1")
        };
        let mut a = spawn_agent("nats", &url, &dir.url(), &spec("a", "2.3.0"), &prefix);
        let _b = spawn_agent("nats", &url, &dir.url(), &spec("b", "7"), &prefix);
        let mut quiet_args = prefix.to_vec();
        quiet_args.push("--no-announce");
        let _quiet = spawn_agent(
            "nats",
            &url,
            &dir.url(),
            &spec("quiet", "1.0.0"),
            &quiet_args,
        );
        // Two routers on the ingress: neither answers for the instances.
        let r1 = Router::start(&dir.url(), &ingress, &[]).await;
        let _r2 = Router::start(&dir.url(), &ingress, &[]).await;
        r1.wait_routed(&service, &["a", "b", "quiet"], Duration::from_secs(15))
            .await;

        let nowhere = ingress.subject(&unique("nosuch"), "get");
        let seen = ask(&service, "a", Some(&nowhere));
        for verb in ["ping", "info", "stats"] {
            assert_eq!(
                ids(&seen[verb]["name"]),
                ["a", "b"],
                "{verb} by name: {seen}"
            );
            assert_eq!(ids(&seen[verb]["any"]), ["a", "b"], "{verb} to all: {seen}");
            assert_eq!(ids(&seen[verb]["id"]), ["a"], "{verb} by id: {seen}");
        }
        let ping = &seen["ping"]["id"][0];
        assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
        assert_eq!(ping["name"], service.as_str());
        assert_eq!(ping["version"], "2.3.0");
        let b = (seen["ping"]["name"].as_array().unwrap().iter())
            .find(|p| p["id"] == "b")
            .unwrap();
        assert_eq!(b["version"], "0.0.0", "not SemVer: {b}");
        assert_eq!(b["metadata"]["baker.version"], "7");
        let info = &seen["info"]["id"][0];
        assert_eq!(info["type"], "io.nats.micro.v1.info_response");
        let endpoint = &info["endpoints"][0];
        assert_eq!(
            endpoint["subject"],
            format!("{}.{service}.>", ingress.prefix)
        );
        assert_eq!(endpoint["queue_group"], ingress.group.as_str());
        let stats = &seen["stats"]["id"][0];
        assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
        assert!(
            stats["started"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{stats}"
        );
        let data = &stats["endpoints"][0]["data"];
        assert_eq!(data["status"], "passing");
        assert_eq!(data["zone"], "z1");
        assert_eq!(data["inbox"], format!("_baker.{service}.a"));
        // An error reply, as a service's error (ADR-32).
        let headers = &seen["request"]["headers"];
        assert_eq!(headers["Nats-Service-Error-Code"], "404", "{headers}");
        assert!(
            (headers["Nats-Service-Error"].as_str())
                .is_some_and(|e| e.contains("no routable instance")),
            "{headers}"
        );

        // `a` leaves: its agent drains it and stops answering for it.
        let code = tokio::task::block_in_place(|| a.terminate(Duration::from_secs(30)));
        assert_eq!(code, Some(0));
        let seen = ask(&service, "a", None);
        assert_eq!(ids(&seen["ping"]["name"]), ["b"], "{seen}");
        assert_eq!(ids(&seen["ping"]["id"]), Vec::<String>::new());
    })
    .await;
}
