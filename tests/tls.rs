//! TLS on every hop: brokers of each test's own with a TLS listener and a CA
//! the test makes (`common::pki`), routers and agents configured with
//! `[[brokers]]` sections.

mod common;

use std::path::Path;
use std::time::Duration;

use common::nats_server::NatsNode;
use common::pki::Pki;
use common::*;
use futures::StreamExt;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes a config file routing on `broker`, with `section` as its one
/// `[[brokers]]` table (none when empty).
fn config_file(path: &Path, broker: &str, section: &str) -> String {
    let mut text = format!("broker = {broker:?}\n");
    if !section.is_empty() {
        text.push_str(&format!("[[brokers]]\nurl = {broker:?}\n{section}"));
    }
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// An agent registering `service`/`id` with the config file `config`.
fn agent_with(config: &str, directory: &str, service: &str, id: &str) -> Proc {
    let admin = format!("127.0.0.1:{}", free_port());
    let spec = format!("service={service},id={id}");
    let args = [
        "--config",
        config,
        "--no-router",
        "--directory",
        directory,
        "--admin",
        &admin,
        "--register",
        &spec,
    ];
    Proc::spawn("agent", &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_mutual_tls_routes_and_without_a_client_certificate_nothing_connects() {
    bounded(TEST_TIMEOUT, async {
        baker_adapter_api::tls::install_crypto_provider();
        let pki = Pki::generate();
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let node = NatsNode::with_args(&[
            "--tls",
            "--tlscert",
            &path(&pki.server_cert),
            "--tlskey",
            &path(&pki.server_key),
            "--tlscacert",
            &path(&pki.ca),
            "--tlsverify",
        ])
        .await;
        let url = format!("tls://127.0.0.1:{}", node.port);
        let app = async_nats::ConnectOptions::new()
            .add_root_certificates(pki.ca.clone())
            .add_client_certificate(pki.client_cert.clone(), pki.client_key.clone())
            .require_tls(true)
            .connect(&url)
            .await
            .expect("the test's client connects over mutual TLS");

        let dir = Directory::start().await;
        let service = unique("tls");
        let mut inbox = app
            .subscribe(format!("_baker.{service}.i1.>"))
            .await
            .unwrap();
        app.flush().await.unwrap();
        let section = format!(
            "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            pki.ca, pki.client_cert, pki.client_key
        );
        let config = config_file(&pki.path("baker.toml"), &url, &section);
        let _agent = agent_with(&config, &dir.url(), &service, "i1");
        let ingress = Ingress::new();
        let router = Router::spawn(
            &dir.url(),
            &[
                "--config",
                &config,
                "--ingress-prefix",
                &ingress.prefix,
                "--queue-group",
                &ingress.group,
            ],
        )
        .await;
        router
            .wait_routed(&service, &["i1"], Duration::from_secs(15))
            .await;
        for seq in 0..100u64 {
            app.publish(ingress.subject(&service, "work"), seq.to_string().into())
                .await
                .unwrap();
        }
        app.flush().await.unwrap();
        let mut received = 0;
        while received < 100 {
            tokio::time::timeout(Duration::from_secs(10), inbox.next())
                .await
                .expect("every message reaches the instance over TLS")
                .unwrap();
            received += 1;
        }

        // Without a client certificate (only the CA), and with no section at
        // all (the system's roots): the server refuses both, and neither
        // process panics or claims to be connected.
        for (name, section, cause) in [
            (
                "ca-only",
                format!("ca_file = {:?}\n", pki.ca),
                "CertificateRequired",
            ),
            ("none", String::new(), "UnknownIssuer"),
        ] {
            let config = config_file(&pki.path(&format!("{name}.toml")), &url, &section);
            let admin = format!("127.0.0.1:{}", free_port());
            let refused = Proc::spawn(
                &format!("router-{name}"),
                &[
                    "--config",
                    &config,
                    "--directory",
                    &dir.url(),
                    "--admin",
                    &admin,
                ],
            );
            let healthz = format!("http://{admin}/healthz");
            wait_until(
                &format!("the {name} router reports a failed connection"),
                Duration::from_secs(20),
                || async {
                    http_ok(&healthz).await && refused.log_text().contains("cannot connect to NATS")
                },
            )
            .await;
            let health: serde_json::Value =
                reqwest::get(&healthz).await.unwrap().json().await.unwrap();
            assert_eq!(health["ingress"]["connected"], false, "{name}: {health}");
            let ready = reqwest::get(format!("http://{admin}/readyz"))
                .await
                .unwrap();
            assert_eq!(ready.status().as_u16(), 503, "{name}: not ready");
            let log = refused.log_text();
            assert!(!log.contains("panicked"), "{name}: {log}");
            // The cause, not only its kind: the server's missing client
            // certificate, or the server certificate the system does not trust.
            assert!(log.contains(cause), "{name}: {log}");
        }
    })
    .await;
}
