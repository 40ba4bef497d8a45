//! The KV directory's security: an agent's key is its own while its lease
//! runs (revision-checked writes), and NATS permissions per role keep an
//! agent to its own services' keys and a router to reading.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use common::nats_server::NatsNode;
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An agent registering `spec` on the KV directory `directory`, with
/// `extra` arguments; its admin address.
async fn kv_agent(directory: &str, spec: &str, extra: &[&str]) -> (Proc, String) {
    let agent = agent_at("nats", &nats_url(), directory, spec, "127.0.0.1:0", extra);
    let admin = agent.logged_addr("admin API listening").await;
    (agent, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_cannot_take_a_live_key_and_takes_it_once_the_lease_ends() {
    bounded(TEST_TIMEOUT, async {
        let bucket = unique("own-");
        let directory = format!("{}?bucket={bucket}", nats_url());
        let service = unique("kvown");
        let (mut first, first_admin) =
            kv_agent(&directory, &format!("service={service},id=a,ttl=2"), &[]).await;
        let ready = format!("http://{first_admin}/readyz");
        wait_until("the first agent registers", Duration::from_secs(20), || {
            http_ok(&ready)
        })
        .await;
        let spec = format!("service={service},id=a,ttl=2,inbox=_baker.{service}.twin");
        let (twin, twin_admin) = kv_agent(&directory, &spec, &[]).await;
        wait_until("the twin is refused", Duration::from_secs(15), || async {
            twin.log_text().contains("another owner")
        })
        .await;
        assert!(!http_ok(&format!("http://{twin_admin}/readyz")).await);
        let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let store = js.get_key_value(&bucket).await.unwrap();
        let inbox = |value: &[u8]| {
            serde_json::from_slice::<serde_json::Value>(value).unwrap()["endpoint"]["inbox"].clone()
        };
        let entry = store.get(format!("{service}.a")).await.unwrap().unwrap();
        assert_eq!(
            inbox(&entry),
            format!("_baker.{service}.a"),
            "the first agent's record stays"
        );

        // The first agent dies: once its 2 s lease has run out, the twin
        // takes the instance.
        first.kill();
        let twin_ready = format!("http://{twin_admin}/readyz");
        wait_until(
            "the twin takes the instance",
            Duration::from_secs(20),
            || http_ok(&twin_ready),
        )
        .await;
        let entry = store.get(format!("{service}.a")).await.unwrap().unwrap();
        assert_eq!(inbox(&entry), format!("_baker.{service}.twin"));
        let _ = js.delete_key_value(&bucket).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_permissions_keep_an_agent_to_its_services_keys_and_a_router_to_reading() {
    bounded(TEST_TIMEOUT, async {
        let files = tempfile::tempdir().unwrap();
        let bucket = "baker-directory";
        let stream = format!("KV_{bucket}");
        let service = unique("perm");
        let other = unique("other");
        // What each role needs, and no more (docs/security.md).
        let agent = format!(
            "publish: {{ allow: [\"$KV.{bucket}.{service}.>\", \"$JS.API.INFO\", \"$JS.API.STREAM.INFO.{stream}\", \
             \"$JS.API.STREAM.MSG.GET.{stream}\", \"$JS.API.DIRECT.GET.{stream}.>\"] }}, \
             subscribe: {{ allow: [\"_INBOX.>\"] }}"
        );
        let router = format!(
            "publish: {{ allow: [\"$JS.API.INFO\", \"$JS.API.STREAM.INFO.{stream}\", \"$JS.API.CONSUMER.CREATE.{stream}\", \
             \"$JS.API.CONSUMER.CREATE.{stream}.>\", \"$JS.API.CONSUMER.DELETE.{stream}.>\", \"$JS.API.CONSUMER.INFO.{stream}.>\", \
             \"$JS.API.DIRECT.GET.{stream}.>\", \"$JS.API.STREAM.MSG.GET.{stream}\", \"$JS.FC.>\", \"$JS.ACK.{stream}.>\"] }}, \
             subscribe: {{ allow: [\"_INBOX.>\"] }}"
        );
        let conf = format!(
            "authorization {{ users = [\n\
             {{ user: admin, password: pw-admin }}\n\
             {{ user: agent, password: pw-agent, permissions: {{ {agent} }} }}\n\
             {{ user: router, password: pw-router, permissions: {{ {router} }} }}\n] }}\n"
        );
        let conf_path = files.path().join("nats.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let node = NatsNode::with_args(&["-c", conf_path.to_str().unwrap()]).await;
        let url = node.url();
        // The bucket is made by an administrator: the agents' and routers'
        // users may not create streams.
        let admin = async_nats::ConnectOptions::with_user_and_password("admin".into(), "pw-admin".into())
            .connect(&url)
            .await
            .unwrap();
        jetstream::new(admin)
            .create_key_value(kv::Config { bucket: bucket.into(), history: 1, ..Default::default() })
            .await
            .unwrap();
        let config = |user: &str| {
            let password = files.path().join(format!("{user}.password"));
            std::fs::write(&password, format!("pw-{user}")).unwrap();
            let path = files.path().join(format!("{user}.toml"));
            std::fs::write(&path, format!(
                "[[brokers]]\nurl = {url:?}\nusername = {user:?}\npassword_file = {password:?}\n"
            )).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let (agent_config, router_config) = (config("agent"), config("router"));
        let directory = format!("{url}?bucket={bucket}");
        let (_own, own_admin) = kv_agent(&directory, &format!("service={service},id=a"), &["--config", &agent_config]).await;
        let own_ready = format!("http://{own_admin}/readyz");
        wait_until("the agent registers its service", Duration::from_secs(20), || http_ok(&own_ready)).await;
        let (foreign, _) = kv_agent(&directory, &format!("service={other},id=b"), &["--config", &agent_config]).await;
        wait_until("the agent is refused another service's key", Duration::from_secs(20), || async {
            let log = foreign.log_text();
            log.contains("registration failed") && log.contains("Permissions Violation")
        })
        .await;

        let nats = nats_url();
        let routing = Router::spawn(&directory, &["--broker", &nats, "--config", &router_config]).await;
        routing.wait_routed(&service, &["a"], Duration::from_secs(20)).await;
        assert!(routing.routed(&other).await.is_empty());
        // The router's user may read, not write.
        let reader = async_nats::ConnectOptions::with_user_and_password("router".into(), "pw-router".into())
            .connect(&url)
            .await
            .unwrap();
        let written = jetstream::new(reader)
            .publish(format!("$KV.{bucket}.{service}.rogue"), "{}".into())
            .await;
        let refused = match written {
            Err(_) => true,
            Ok(ack) => ack.await.is_err(),
        };
        assert!(refused, "the router's user cannot write a key");
    })
    .await;
}
