//! MQTT helpers: private Mosquitto brokers, inbox consumers and a QoS 1
//! publisher, all with rumqttc's MQTT 5 client.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

use super::{free_port, unique, Inbox};

/// The shared broker (integration/run.sh starts it).
pub fn mqtt_url() -> String {
    std::env::var("BAKER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".to_owned())
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split('?').next().unwrap();
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host, port) = rest.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

/// The settings Baker's at-least-once guarantee needs from Mosquitto: no cap
/// on the messages queued for a session (the default, 1000, drops QoS 1
/// messages beyond it), and persistence so a restart keeps them.
pub const BAKER_SETTINGS: &str = "max_queued_messages 0\npersistence true\n";

/// A Mosquitto of the test's own, on a free port, killed when dropped.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts with `settings` (lines of mosquitto.conf) added.
    pub fn start(settings: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n\
             persistence_location {}/\nlog_dest stderr\nlog_type error\nlog_type warning\n{settings}",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut broker = Mosquitto {
            port,
            dir,
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Writes a password file in `dir` with `user` and `password` (with
    /// mosquitto_passwd) and returns its path, for the `password_file`
    /// setting of [`Mosquitto::start`].
    pub fn password_file(dir: &Path, user: &str, password: &str) -> PathBuf {
        let passwd = super::broker_binary(
            "mosquitto_passwd",
            "BAKER_TEST_MOSQUITTO_PASSWD",
            &["/usr/bin/mosquitto_passwd"],
            "install Mosquitto 2.0.11 (Debian 12: apt-get install mosquitto), which has it",
        );
        let file = dir.join("mosquitto.passwd");
        let status = Command::new(&passwd)
            .arg("-b")
            .arg("-c")
            .arg(&file)
            .args([user, password])
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", passwd.display()));
        assert!(status.success(), "{} failed: {status}", passwd.display());
        assert!(
            file.is_file(),
            "{} made no {}",
            passwd.display(),
            file.display()
        );
        file
    }

    /// The mosquitto binary, looked for once: `BAKER_TEST_MOSQUITTO`, else
    /// Debian's, else on PATH.
    fn bin() -> &'static Path {
        static BIN: OnceLock<PathBuf> = OnceLock::new();
        BIN.get_or_init(|| {
            super::broker_binary(
                "mosquitto",
                "BAKER_TEST_MOSQUITTO",
                &["/usr/sbin/mosquitto", "/usr/bin/mosquitto"],
                "install Mosquitto 2.0.11 (Debian 12: apt-get install mosquitto) or run \
                 integration/brokers.sh, which installs it",
            )
        })
    }

    /// Starts the broker (again, on the same port and store).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new(Self::bin())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Self::bin().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: Mosquitto saves its store and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A connected MQTT 5 test client whose event loop runs in a task; incoming
/// publishes (auto-acknowledged) come out of the receiver.
pub struct Client {
    pub client: AsyncClient,
    pub incoming: mpsc::UnboundedReceiver<Publish>,
    acked: tokio::sync::watch::Receiver<u64>,
    subscribed: tokio::sync::watch::Receiver<u64>,
    /// Whether the broker had a session for this client id when it first
    /// connected.
    session_present: bool,
}

impl Client {
    /// Connects to `url` as `id`; a persistent session when `persistent`.
    pub async fn connect(url: &str, id: &str, persistent: bool) -> Client {
        Self::connect_with(url, id, persistent, 1000).await
    }

    /// [`Client::connect`] with a Receive Maximum of `receive_max`.
    pub async fn connect_with(url: &str, id: &str, persistent: bool, receive_max: u16) -> Client {
        let mut options = Self::options(url, id);
        options
            .set_clean_start(!persistent)
            .set_receive_maximum(Some(receive_max));
        if persistent {
            options.set_session_expiry_interval(Some(600));
        }
        Self::start(options).await
    }

    /// [`Client::connect`] on a clean session over TLS, trusting `pki`'s CA
    /// and showing its client certificate.
    pub async fn connect_tls(url: &str, id: &str, pki: &super::pki::Pki) -> Client {
        let read = |path: &Path| std::fs::read(path).unwrap();
        let mut options = Self::options(url, id);
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: read(&pki.ca),
                alpn: None,
                client_auth: Some((read(&pki.client_cert), read(&pki.client_key))),
            },
        ));
        Self::start(options).await
    }

    fn options(url: &str, id: &str) -> MqttOptions {
        let (host, port) = host_port(url);
        let mut options = MqttOptions::new(id, host, port);
        let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
        if let Some((user, password)) = authority
            .split_once('@')
            .and_then(|(userinfo, _)| userinfo.split_once(':'))
        {
            options.set_credentials(user, password);
        }
        options
            .set_max_packet_size(Some(16 * 1024 * 1024))
            .set_keep_alive(Duration::from_secs(10));
        options
    }

    /// Connects with `options`, waiting for the broker's CONNACK.
    async fn start(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, incoming) = mpsc::unbounded_channel();
        let (acked_tx, acked) = tokio::sync::watch::channel(0u64);
        let (sub_tx, subscribed) = tokio::sync::watch::channel(0u64);
        let (up_tx, mut up) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => sub_tx.send_modify(|n| *n += 1),
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        up_tx.send_if_modified(|up| {
                            up.get_or_insert(connack.session_present);
                            true
                        });
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let session_present =
            tokio::time::timeout(Duration::from_secs(10), up.wait_for(Option::is_some))
                .await
                .expect("MQTT broker must answer (integration/run.sh starts it)")
                .unwrap()
                .unwrap_or_default();
        Client {
            client,
            incoming,
            acked,
            subscribed,
            session_present,
        }
    }

    /// Whether the broker had a session for this client id when it first
    /// connected.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Disconnects (a persistent session stays with the broker).
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Subscribes at QoS 1 and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        let before = *self.subscribed.borrow();
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            self.subscribed.wait_for(|n| *n > before),
        )
        .await
        .expect("SUBACK")
        .unwrap();
    }

    /// Publishes payloads `start..start+count` at QoS 1 and waits for every
    /// PUBACK.
    pub async fn publish_seq(&mut self, topic: &str, start: u64, count: u64) {
        let before = *self.acked.borrow();
        for seq in start..start + count {
            self.client
                .publish(topic, QoS::AtLeastOnce, false, seq.to_string())
                .await
                .unwrap();
        }
        tokio::time::timeout(
            Duration::from_secs(120),
            self.acked.wait_for(|n| *n >= before + count),
        )
        .await
        .expect("PUBACKs for every publish")
        .unwrap();
    }

    /// Publishes one message with properties at `qos`.
    pub async fn publish_with(
        &self,
        topic: &str,
        qos: QoS,
        payload: impl Into<Bytes>,
        properties: PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, false, payload, properties)
            .await
            .unwrap();
    }
}

/// Consumes `_baker/<service>/<id>/#` like an instance would, counting the
/// sequence numbers in the payloads.
pub async fn consume_inbox(url: &str, service: &str, id: &str, persistent: bool) -> Inbox {
    let (inbox, _) = consume_inbox_full(url, service, id, persistent).await;
    inbox
}

/// [`consume_inbox`], also returning every message received.
pub async fn consume_inbox_full(
    url: &str,
    service: &str,
    id: &str,
    persistent: bool,
) -> (Inbox, std::sync::Arc<std::sync::Mutex<Vec<Publish>>>) {
    let client = Client::connect(url, &unique(&format!("inbox-{id}-")), persistent).await;
    consume_with(client, service, id).await
}

/// The first message an inbox of [`consume_inbox_full`] received, once it
/// has one.
pub async fn first_received(inbox: &Inbox, all: &std::sync::Mutex<Vec<Publish>>) -> Publish {
    super::wait_until(
        "the MQTT instance receives",
        Duration::from_secs(10),
        || async { inbox.count() >= 1 },
    )
    .await;
    all.lock().unwrap()[0].clone()
}

/// Consumes `_baker/<service>/<id>/#` with `client`, like an instance would:
/// the sequence numbers in the payloads, and every message received.
pub async fn consume_with(
    mut client: Client,
    service: &str,
    id: &str,
) -> (Inbox, std::sync::Arc<std::sync::Mutex<Vec<Publish>>>) {
    client.subscribe(&format!("_baker/{service}/{id}/#")).await;
    let inbox = Inbox::default();
    let all = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let received = inbox.received.clone();
    let keep = all.clone();
    tokio::spawn(async move {
        while let Some(p) = client.incoming.recv().await {
            let seq = std::str::from_utf8(&p.payload)
                .ok()
                .and_then(|s| s.trim_end().parse().ok())
                .unwrap_or(u64::MAX);
            received.lock().unwrap().push((seq, Instant::now()));
            keep.lock().unwrap().push(p);
        }
        drop(client.client);
    });
    (inbox, all)
}

/// A router on `url` with its own client id, prefix and queue group.
pub struct MqttIngress {
    pub url: String,
    pub client_id: String,
    pub prefix: String,
    pub group: String,
}

impl MqttIngress {
    pub fn new(url: &str) -> Self {
        MqttIngress {
            url: url.to_owned(),
            client_id: unique("router-"),
            prefix: unique("t"),
            group: unique("g"),
        }
    }

    pub fn topic(&self, service: &str, topic: &str) -> String {
        format!("{}/{service}/{topic}", self.prefix)
    }

    /// Starts a router with this ingress (same client id every time).
    pub async fn router(&self, directory: &str, extra: &[&str]) -> super::Router {
        let broker = format!("{}?client_id={}", self.url, self.client_id);
        let mut args = vec![
            "--adapter",
            "mqtt",
            "--broker",
            &broker,
            "--ingress-prefix",
            &self.prefix,
            "--queue-group",
            &self.group,
        ];
        args.extend_from_slice(extra);
        super::Router::spawn(directory, &args).await
    }

    /// Starts a router with this ingress and waits until it routes
    /// `service` to the instances `ids`.
    pub async fn router_routing(
        &self,
        directory: &str,
        extra: &[&str],
        service: &str,
        ids: &[&str],
    ) -> super::Router {
        let router = self.router(directory, extra).await;
        router
            .wait_routed(service, ids, std::time::Duration::from_secs(15))
            .await;
        router
    }
}

/// The user property `name` of `publish`.
pub fn user_property<'a>(publish: &'a Publish, name: &str) -> Option<&'a str> {
    publish
        .properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// An agent registering `service`/`id` with its inbox on `broker`.
pub fn agent(directory: &str, broker: &str, service: &str, id: &str) -> super::Proc {
    super::agent_on("mqtt", broker, directory, service, id, &[])
}

/// Answers each request arriving under `filter` on `url` at its response
/// topic, with its correlation data and the body `answer` makes of it,
/// until the task is aborted.
pub async fn respond(
    url: &str,
    filter: &str,
    answer: impl Fn(&Publish) -> String + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut responder = Client::connect(url, &unique("responder-"), false).await;
    responder.subscribe(filter).await;
    tokio::spawn(async move {
        while let Some(request) = responder.incoming.recv().await {
            let props = request.properties.clone().unwrap_or_default();
            let reply = PublishProperties {
                correlation_data: props.correlation_data.clone(),
                ..Default::default()
            };
            if let Some(topic) = props.response_topic {
                let body = answer(&request);
                responder
                    .publish_with(&topic, QoS::AtLeastOnce, body, reply)
                    .await;
            }
        }
    })
}
