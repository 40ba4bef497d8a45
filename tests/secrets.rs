//! Broker passwords stay secret (NATS, AMQP, MQTT): given to an agent in its broker URL (the
//! old way) and to a router in a `[[brokers]]` section's password file,
//! with every log at debug level, the password is found nowhere: not in
//! the logs, `/healthz`, `/v1/status`, `/metrics`, `baker-mq status`, or the
//! directory's catalog.

mod common;

use std::time::Duration;

use common::amqp::{self, User, Vhost};
use common::mqtt::{self as mqtt_test, Mosquitto};
use common::nats_server::NatsNode;
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything an operator or another client can read of `procs` (their
/// admin APIs at `admins`, their logs, `baker-mq status`) and of the
/// directory, concatenated.
async fn everything_shown(dir: &Directory, procs: &[(&Proc, &str)]) -> String {
    let mut shown = reqwest::get(format!("{}/v1/catalog", dir.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (proc, admin) in procs {
        for path in ["healthz", "readyz", "metrics", "v1/status"] {
            let body = reqwest::get(format!("http://{admin}/{path}"))
                .await
                .unwrap();
            shown.push_str(&body.text().await.unwrap());
        }
        let status = std::process::Command::new(BIN)
            .args(["status", "--admin", admin])
            .output()
            .unwrap();
        shown.push_str(&String::from_utf8_lossy(&status.stdout));
        shown.push_str(&String::from_utf8_lossy(&status.stderr));
        shown.push_str(&proc.log_text());
    }
    shown
}

/// Runs an agent of `service` with `agent_broker` (a URL carrying the
/// password) and a router with `config` (a section with the password file),
/// routes a message through, and checks that `password` shows nowhere.
async fn password_shows_nowhere(
    adapter: &str,
    agent_broker: &str,
    config: &std::path::Path,
    password: &str,
    deliver: impl std::future::Future<Output = ()>,
    service: &str,
) {
    let dir = Directory::start().await;
    let spec = format!("service={service},id=s1");
    let agent = Proc::spawn(
        &format!("agent-{adapter}"),
        &[
            "--log",
            "debug",
            "--no-router",
            "--adapter",
            adapter,
            "--broker",
            agent_broker,
            "--directory",
            &dir.url(),
            "--admin",
            "127.0.0.1:0",
            "--register",
            &spec,
        ],
    );
    let agent_admin = agent.admin_addr().await;
    let router = Router::spawn(
        &dir.url(),
        &["--log", "debug", "--config", config.to_str().unwrap()],
    )
    .await;
    router
        .wait_routed(service, &["s1"], Duration::from_secs(15))
        .await;
    deliver.await;
    let shown = everything_shown(
        &dir,
        &[(&agent, &agent_admin), (&router.proc, &router.admin)],
    )
    .await;
    assert!(shown.contains(" DEBUG "), "the logs are at debug level");
    assert!(
        !shown.contains(password),
        "{adapter}: the password shows: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_password_shows_nowhere() {
    bounded(TEST_TIMEOUT, async {
        use futures::StreamExt;
        let files = tempfile::tempdir().unwrap();
        let password = unique("pw-");
        let conf = files.path().join("nats.conf");
        std::fs::write(&conf, format!("authorization {{ users = [ {{ user: baker, password: {password:?} }} ] }}\n")).unwrap();
        let node = NatsNode::with_args(&["-c", conf.to_str().unwrap()]).await;
        let url = node.url();
        let with_password = format!("nats://baker:{password}@127.0.0.1:{}", node.port);
        std::fs::write(files.path().join("password"), &password).unwrap();
        let config = files.path().join("router.toml");
        std::fs::write(&config, format!(
            "broker = {url:?}\n[[brokers]]\nurl = {url:?}\nusername = \"baker\"\npassword_file = {:?}\n",
            files.path().join("password")
        )).unwrap();
        // async-nats 0.51 ignores a URL's credentials: the test's client
        // gives them as options (Baker reads them from the URL itself).
        let app = async_nats::ConnectOptions::with_user_and_password("baker".into(), password.clone())
            .connect(&url)
            .await
            .unwrap();
        let service = unique("secret");
        let mut inbox = subscribe_inbox(&app, &service, "s1").await;
        let deliver = async {
            app.publish(format!("baker.{service}.x"), "m".into()).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), inbox.next()).await.expect("routed").unwrap();
        };
        password_shows_nowhere("nats", &with_password, &config, &password, deliver, &service).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_password_shows_nowhere() {
    bounded(TEST_TIMEOUT, async {
        let files = tempfile::tempdir().unwrap();
        let vhost = Vhost::create();
        let password = unique("pw-");
        let user = User::create(&vhost, &password);
        let url = vhost.url().replace("guest:guest@", "");
        let with_password = vhost.url().replace("guest:guest", &format!("{}:{password}", user.name));
        std::fs::write(files.path().join("password"), &password).unwrap();
        let config = files.path().join("router.toml");
        std::fs::write(&config, format!(
            "adapter = \"amqp\"\nbroker = {url:?}\n[[brokers]]\nurl = {url:?}\nusername = {:?}\npassword_file = {:?}\n",
            user.name,
            files.path().join("password")
        )).unwrap();
        let service = unique("secret");
        let (_conn, channel) = vhost.channel().await;
        let (inbox, _) = amqp::consume(&channel, &format!("_baker.{service}.s1")).await;
        let deliver = async {
            amqp::publish_one(&channel, &format!("{service}.x"), b"m", Default::default()).await;
            wait_until("routed", Duration::from_secs(10), || async { inbox.count() >= 1 }).await;
        };
        password_shows_nowhere("amqp", &with_password, &config, &password, deliver, &service).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_password_shows_nowhere() {
    bounded(TEST_TIMEOUT, async {
        let files = tempfile::tempdir().unwrap();
        let password = unique("pw-");
        let users = Mosquitto::password_file(files.path(), "baker", &password);
        let broker = Mosquitto::start(&format!("allow_anonymous false\npassword_file {}\n", users.display()));
        let url = broker.url();
        let with_password = url.replace("mqtt://", &format!("mqtt://baker:{password}@"));
        std::fs::write(files.path().join("password"), &password).unwrap();
        let config = files.path().join("router.toml");
        std::fs::write(&config, format!(
            "adapter = \"mqtt\"\nbroker = {url:?}\n[[brokers]]\nurl = {url:?}\nusername = \"baker\"\npassword_file = {:?}\n",
            files.path().join("password")
        )).unwrap();
        let service = unique("secret");
        let inbox = mqtt_test::consume_inbox(&with_password, &service, "s1", false).await;
        let mut publisher = mqtt_test::Client::connect(&with_password, &unique("pub-"), false).await;
        let deliver = async {
            publisher.publish_seq(&format!("baker/{service}/x"), 0, 1).await;
            wait_until("routed", Duration::from_secs(10), || async { inbox.count() >= 1 }).await;
        };
        password_shows_nowhere("mqtt", &with_password, &config, &password, deliver, &service).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_with_credentials_is_kept_without_them_and_the_directory_says_so() {
    bounded(TEST_TIMEOUT, async {
        let dir = Directory::start().await;
        let service = unique("old");
        let password = unique("pw-");
        let record = serde_json::json!({
            "service": service, "id": "o1",
            "endpoint": {"adapter": "amqp", "broker": format!("amqp://app:{password}@rabbit:5672/v?heartbeat=5"),
                "inbox": format!("_baker.{service}.o1")},
        });
        let put = reqwest::Client::new()
            .put(format!("{}/v1/services/{service}/instances/o1", dir.url()))
            .json(&record)
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "an old agent's record is accepted");
        let catalog = reqwest::get(format!("{}/v1/catalog", dir.url())).await.unwrap().text().await.unwrap();
        assert!(!catalog.contains(&password), "{catalog}");
        assert!(catalog.contains("amqp://rabbit:5672/v?heartbeat=5"), "{catalog}");
        wait_until("the directory warns", Duration::from_secs(5), || async {
            dir.proc.log_text().contains("stored without them")
        })
        .await;
        assert!(!dir.proc.log_text().contains(&password));
    })
    .await;
}
