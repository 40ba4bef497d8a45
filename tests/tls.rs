//! TLS on every hop: brokers of each test's own (nats-server, Mosquitto)
//! with a TLS listener that requires a client certificate and a CA the test
//! makes (`common::pki`), routers and agents configured with `[[brokers]]`
//! sections.

mod common;

use std::path::Path;
use std::time::Duration;

use common::mqtt::{self as mqtt, Mosquitto};
use common::nats_server::NatsNode;
use common::pki::Pki;
use common::*;
use futures::StreamExt;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Writes a config file routing with `adapter` on `broker`, with `section`
/// as its one `[[brokers]]` table (none when empty).
fn config_file(path: &Path, adapter: &str, broker: &str, section: &str) -> String {
    let mut text = format!("adapter = {adapter:?}\nbroker = {broker:?}\n");
    if !section.is_empty() {
        text.push_str(&format!("[[brokers]]\nurl = {broker:?}\n{section}"));
    }
    std::fs::write(path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A `[[brokers]]` table's lines trusting `pki`'s CA and showing its client
/// certificate.
fn mutual_tls(pki: &Pki) -> String {
    format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.ca, pki.client_cert, pki.client_key
    )
}

/// An agent registering `service`/`id` with the config file `config`.
fn agent_with(config: &str, directory: &str, service: &str, id: &str) -> Proc {
    let admin = "127.0.0.1:0";
    let spec = format!("service={service},id={id}");
    let args = [
        "--config",
        config,
        "--no-router",
        "--directory",
        directory,
        "--admin",
        admin,
        "--register",
        &spec,
    ];
    Proc::spawn("agent", &args)
}

/// An agent registering `service`/i1 and a router on `ingress`, both over
/// mutual TLS to `broker` through `adapter`, once the router routes to i1.
async fn route_over_mutual_tls(
    pki: &Pki,
    adapter: &str,
    broker: &str,
    directory: &Directory,
    service: &str,
    ingress: &Ingress,
) -> (Proc, Router) {
    let config = config_file(
        &pki.path(&format!("{adapter}.toml")),
        adapter,
        broker,
        &mutual_tls(pki),
    );
    let agent = agent_with(&config, &directory.url(), service, "i1");
    let router = Router::spawn(
        &directory.url(),
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
        .wait_routed(service, &["i1"], Duration::from_secs(15))
        .await;
    (agent, router)
}

/// Routers on `broker` (which requires a client certificate) without one
/// (only the CA), and with no section at all (the system's roots): the
/// broker refuses both; each logs `refusal` with the cause, not only its
/// kind (the broker's missing client certificate, or the broker certificate
/// the system does not trust), reports its ingress not connected and not
/// ready, and does not panic.
async fn refused_without_a_client_certificate(
    pki: &Pki,
    adapter: &str,
    broker: &str,
    directory: &Directory,
    refusal: &str,
) {
    for (name, section, cause) in [
        (
            "ca-only",
            format!("ca_file = {:?}\n", pki.ca),
            "CertificateRequired",
        ),
        ("none", String::new(), "UnknownIssuer"),
    ] {
        let name = format!("{adapter}-{name}");
        let config = config_file(
            &pki.path(&format!("{name}.toml")),
            adapter,
            broker,
            &section,
        );
        let refused = Proc::spawn(
            &format!("router-{name}"),
            &[
                "--config",
                &config,
                "--directory",
                &directory.url(),
                "--admin",
                "127.0.0.1:0",
            ],
        );
        let admin = refused.logged_addr("admin API listening").await;
        let healthz = format!("http://{admin}/healthz");
        wait_until(
            &format!("the {name} router reports a failed connection with its cause"),
            Duration::from_secs(20),
            || async {
                let log = refused.log_text();
                http_ok(&healthz).await && log.contains(refusal) && log.contains(cause)
            },
        )
        .await;
        let health: serde_json::Value = reqwest::get(&healthz).await.unwrap().json().await.unwrap();
        assert_eq!(health["ingress"]["connected"], false, "{name}: {health}");
        let ready = reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap();
        assert_eq!(ready.status().as_u16(), 503, "{name}: not ready");
        // Told apart from an outage.
        let body = ready.text().await.unwrap();
        assert!(body.contains("refuses this sidecar"), "{name}: {body}");
        let log = refused.log_text();
        assert!(!log.contains("panicked"), "{name}: {log}");
    }
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
        let mut inbox = subscribe_inbox(&app, &service, "i1").await;
        let ingress = Ingress::new();
        let _routing = route_over_mutual_tls(&pki, "nats", &url, &dir, &service, &ingress).await;
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

        refused_without_a_client_certificate(&pki, "nats", &url, &dir, "cannot connect to NATS")
            .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_mutual_tls_routes_and_without_a_client_certificate_nothing_connects() {
    bounded(TEST_TIMEOUT, async {
        baker_adapter_api::tls::install_crypto_provider();
        let pki = Pki::generate();
        // Read by Mosquitto, which may run as a user of its own.
        pki.share();
        let broker = Mosquitto::start(&format!(
            "{}cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            mqtt::BAKER_SETTINGS,
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display(),
        ));
        let url = format!("mqtts://127.0.0.1:{}", broker.port);
        let instance = mqtt::Client::connect_tls(&url, &unique("instance-"), &pki).await;

        let dir = Directory::start().await;
        let service = unique("tls");
        let (inbox, _) = mqtt::consume_with(instance, &service, "i1").await;
        let ingress = Ingress::new();
        let _routing = route_over_mutual_tls(&pki, "mqtt", &url, &dir, &service, &ingress).await;
        let mut app = mqtt::Client::connect_tls(&url, &unique("app-"), &pki).await;
        let topic = format!("{}/{service}/work", ingress.prefix);
        app.publish_seq(&topic, 0, 100).await;
        wait_until(
            "every message reaches the instance over TLS",
            Duration::from_secs(20),
            || async { inbox.count() >= 100 },
        )
        .await;
        let mut seqs = inbox.seqs();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs, (0..100).collect::<Vec<u64>>());

        refused_without_a_client_certificate(
            &pki,
            "mqtt",
            &url,
            &dir,
            "cannot connect to MQTT broker",
        )
        .await;
    })
    .await;
}

/// An HTTPS health endpoint on a port the system picks, with `pki`'s server
/// certificate.
async fn https_health(pki: &Pki) -> u16 {
    baker_adapter_api::tls::install_crypto_provider();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let config =
        axum_server::tls_rustls::RustlsConfig::from_pem_file(&pki.server_cert, &pki.server_key)
            .await
            .unwrap();
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    tokio::spawn(axum_server::from_tcp_rustls(listener, config).serve(app.into_make_service()));
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_directory_and_an_https_health_check_work_with_the_ca_and_not_without() {
    bounded(TEST_TIMEOUT, async {
        let pki = Pki::generate();
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let directory = Proc::spawn(
            "directory-https",
            &[
                "directory",
                "--listen",
                "127.0.0.1:0",
                "--directory-tls-cert-file",
                &path(&pki.server_cert),
                "--directory-tls-key-file",
                &path(&pki.server_key),
            ],
        );
        let listen = directory.logged_addr("serving the directory").await;
        let directory = format!("https://{listen}");
        let health = https_health(&pki).await;
        let service = unique("https");
        let spec = format!(
            "service={service},id=h1,check=https://127.0.0.1:{health}/health,check_interval_ms=200"
        );
        let ca = path(&pki.ca);
        let url = nats_url();
        let _agent = Proc::spawn(
            "agent-https",
            &[
                "--no-router",
                "--broker",
                &url,
                "--directory",
                &directory,
                "--http-ca-file",
                &ca,
                "--admin",
                "127.0.0.1:0",
                "--register",
                &spec,
            ],
        );
        // Routed means: registered over HTTPS, and the HTTPS check passed
        // (an instance with a check is critical until its first pass).
        let router = Router::spawn(&directory, &["--broker", &url, "--http-ca-file", &ca]).await;
        router
            .wait_routed(&service, &["h1"], Duration::from_secs(20))
            .await;

        // Without the CA, the system's roots do not know the certificate.
        let untrusting = Proc::spawn(
            "agent-untrusting",
            &[
                "--no-router",
                "--broker",
                &url,
                "--directory",
                &directory,
                "--admin",
                "127.0.0.1:0",
                "--register",
                &format!("service={service},id=h2"),
            ],
        );
        wait_until(
            "the agent without the CA says why it cannot register",
            Duration::from_secs(15),
            || async {
                let log = untrusting.log_text();
                log.contains("registration failed") && log.contains("UnknownIssuer")
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_over_mutual_tls_routes_and_without_a_client_certificate_nothing_connects() {
    bounded(Duration::from_secs(240), async {
        use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
        baker_adapter_api::tls::install_crypto_provider();
        let pki = Pki::generate();
        pki.share();
        let node =
            common::rabbit_node::RabbitNode::start_tls(&pki.ca, &pki.server_cert, &pki.server_key)
                .await;
        let url = node.url();
        // The test's own client, over mutual TLS too.
        let tls = OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: std::fs::read(&pki.client_cert).unwrap(),
                key: std::fs::read(&pki.client_key).unwrap(),
            }),
            cert_chain: Some(std::fs::read_to_string(&pki.ca).unwrap()),
        };
        let uri = format!("amqps://guest:guest@127.0.0.1:{}/%2f", node.tls_port)
            .parse()
            .unwrap();
        let runtime = lapin::runtime::default_runtime().unwrap();
        let connection =
            lapin::Connection::connect_uri_with_config(uri, Default::default(), tls, runtime)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "the test's client connects over mutual TLS: {e}\n{}",
                        node.log()
                    )
                });
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        let directory = Directory::start().await;
        let service = unique("tlsq");
        let ingress = Ingress::new();
        let (inbox, _) = common::amqp::consume(&channel, &format!("_baker.{service}.i1")).await;
        let (_agent, _router) =
            route_over_mutual_tls(&pki, "amqp", &url, &directory, &service, &ingress).await;
        common::amqp::publish(
            &channel,
            &ingress.prefix,
            &format!("{service}.work"),
            0,
            100,
            50,
        )
        .await;
        wait_until(
            "every message reaches the instance over TLS",
            Duration::from_secs(20),
            || async { inbox.count() >= 100 },
        )
        .await;
        refused_without_a_client_certificate(
            &pki,
            "amqp",
            &url,
            &directory,
            "cannot subscribe to the ingress",
        )
        .await;
    })
    .await;
}
