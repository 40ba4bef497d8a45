//! Broker credentials from `[[brokers]]` sections: NATS user and password,
//! token, NKey and credentials (JWT) file, each against a nats-server of the
//! test's own that requires it, and MQTT user and password against a
//! Mosquitto of the test's own. With the credentials a router gets ready;
//! without them the server refuses it and the router says why.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::mqtt::Mosquitto;
use common::nats_server::NatsNode;
use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A JWT as nats-server reads them: claims signed with the issuer's NKey.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": unique("jti").to_uppercase(),
        "iat": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&signature))
}

/// An operator, an account and a user of it: the server's configuration
/// (operator mode, the account preloaded) and the user's credentials file.
fn operator_mode() -> (String, String) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream (every test server runs it) needs a system account.
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
        "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "op",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "acc",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "sys",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "router",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2}),
    );
    let server = format!(
        "operator: {operator_jwt:?}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: {account_jwt:?}\n  {sys}: {system_jwt:?}\n}}\n",
        account.public_key(),
        sys = system.public_key(),
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    (server, creds)
}

/// Starts a router with `config` and returns it with its admin address.
async fn router_with(config: &Path, directory: &str, name: &str) -> (Proc, String) {
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--directory",
        directory,
        "--admin",
        "127.0.0.1:0",
    ];
    let router = Proc::spawn(name, &args);
    let admin = router.logged_addr("admin API listening").await;
    (router, admin)
}

/// A router configured with `section` for `url` (through `adapter`) gets
/// ready; one without it is refused by the broker: it logs `refusal` with
/// `cause`, and is not ready.
async fn ready_with_and_refused_without(
    dir: &Path,
    directory: &str,
    name: &str,
    (adapter, url, section): (&str, &str, &str),
    (refusal, cause): (&str, &str),
) {
    let head = format!("adapter = {adapter:?}\nbroker = {url:?}\n");
    let with = dir.join(format!("{name}-with.toml"));
    std::fs::write(
        &with,
        format!("{head}[[brokers]]\nurl = {url:?}\n{section}"),
    )
    .unwrap();
    let without = dir.join(format!("{name}-without.toml"));
    std::fs::write(&without, &head).unwrap();
    let (_router, admin) = router_with(&with, directory, &format!("router-{name}")).await;
    let ready = format!("http://{admin}/readyz");
    wait_until(
        &format!("the router with the {name} gets ready"),
        Duration::from_secs(20),
        || http_ok(&ready),
    )
    .await;
    let (refused, admin) = router_with(&without, directory, &format!("refused-{name}")).await;
    wait_until(
        &format!("the router without the {name} is refused"),
        Duration::from_secs(20),
        || async { refused.log_text().contains(refusal) },
    )
    .await;
    let log = refused.log_text();
    assert!(log.contains(cause), "{name}: {log}");
    assert!(!log.contains("panicked"), "{name}: {log}");
    // Not ready, and told apart from an outage: the broker refuses it.
    let readyz = format!("http://{admin}/readyz");
    wait_until(
        &format!("/readyz says the broker refuses the router without the {name}"),
        Duration::from_secs(10),
        || async {
            match reqwest::get(&readyz).await {
                Ok(response) => {
                    response.status() == 503
                        && response
                            .text()
                            .await
                            .is_ok_and(|body| body.contains("refuses this sidecar"))
                }
                Err(_) => false,
            }
        },
    )
    .await;
    assert!(log.contains("refuses this sidecar"), "{name}: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_user_password_token_nkey_and_credentials_file_each_connect_and_nothing_else_does() {
    bounded(TEST_TIMEOUT, async {
        let files = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = files.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let nkey = nkeys::KeyPair::new_user();
        let (operator_server, creds) = operator_mode();
        let cases = [
            (
                "password",
                "authorization { users = [ { user: router, password: \"pw-8d1e\" } ] }\n"
                    .to_owned(),
                format!(
                    "username = \"router\"\npassword_file = {:?}\n",
                    write("password", "pw-8d1e\n")
                ),
            ),
            (
                "token",
                "authorization { token: \"tok-51c2\" }\n".to_owned(),
                format!("token_file = {:?}\n", write("token", "tok-51c2")),
            ),
            (
                "nkey",
                format!(
                    "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
                    nkey.public_key()
                ),
                format!(
                    "nkey_seed_file = {:?}\n",
                    write("seed", &nkey.seed().unwrap())
                ),
            ),
            (
                "creds",
                operator_server,
                format!("credentials_file = {:?}\n", write("router.creds", &creds)),
            ),
        ];
        let dir = Directory::start().await;
        for (name, server, section) in cases {
            let server_conf = write(&format!("{name}.conf"), &server);
            let node = NatsNode::with_args(&["-c", server_conf.to_str().unwrap()]).await;
            ready_with_and_refused_without(
                files.path(),
                &dir.url(),
                name,
                ("nats", &node.url(), &section),
                ("cannot connect to NATS", "uthorization"),
            )
            .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_user_and_password_connect_and_nothing_else_does() {
    bounded(TEST_TIMEOUT, async {
        let files = tempfile::tempdir().unwrap();
        let users = Mosquitto::password_file(files.path(), "router", "pw-3f7a");
        let broker = Mosquitto::start(&format!(
            "allow_anonymous false\npassword_file {}\n",
            users.display()
        ));
        let password = files.path().join("password");
        std::fs::write(&password, "pw-3f7a\n").unwrap();
        let section = format!("username = \"router\"\npassword_file = {password:?}\n");
        let dir = Directory::start().await;
        ready_with_and_refused_without(
            files.path(),
            &dir.url(),
            "mqtt-password",
            ("mqtt", &broker.url(), &section),
            ("cannot connect to MQTT broker", "NotAuthorized"),
        )
        .await;
    })
    .await;
}
