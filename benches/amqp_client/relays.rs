//! The relay `amqp_client` measures, written once on each client: this
//! bench's binary re-executed with `BAKER_BENCH_AMQP_RELAY=lapin`,
//! `=lapin-await` or `=amqprs`, a separate process doing the hop baker-mq
//! does on AMQP and nothing else.
//!
//! Both are the same program: one connection (named, heartbeats as the
//! broker proposes), a consumer channel on queue A with prefetch N and
//! manual acks, a publisher channel in confirm mode. Each delivery is
//! published to queue B through the default exchange (its properties kept,
//! made persistent); the originals are acked once their publishes are
//! confirmed, in contiguous runs with one `multiple` ack, as baker-mq's AMQP
//! adapter does (`adapters/amqp/src/acks.rs`): confirms come in publish
//! order, which is delivery order, so the run is a prefix of the publishes
//! in flight. A nacked publish has its original nacked for redelivery. Only
//! the client library differs: lapin's publish is a future that resolves
//! once lapin's I/O thread wrote the frames, to a future of the confirm;
//! amqprs's publish resolves once the frames are queued for its writer task,
//! and it reports confirms by delivery tag to a channel callback, so the
//! relay numbers its publishes to match them. `lapin` hands each publish
//! over and goes on (the write awaited with the confirm); `lapin-await`
//! waits for each write before the next delivery, as baker-mq's publisher
//! task does.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{FutureExt, StreamExt};

use crate::common::env_or;
use crate::common::procs::run_relay;

/// Selects relay mode when this binary re-executes itself, and which
/// client: `lapin`, `lapin-await` or `amqprs`.
pub const RELAY_ENV: &str = "BAKER_BENCH_AMQP_RELAY";
/// The broker URL with vhost, as the relay connects to it.
pub const RELAY_URL_ENV: &str = "BAKER_BENCH_AMQP_RELAY_URL";
/// Queue A, consumed.
pub const RELAY_SRC_ENV: &str = "BAKER_BENCH_AMQP_RELAY_SRC";
/// Queue B, published to.
pub const RELAY_DST_ENV: &str = "BAKER_BENCH_AMQP_RELAY_DST";
/// The relay's prefetch on queue A.
pub const RELAY_PREFETCH_ENV: &str = "BAKER_BENCH_AMQP_RELAY_PREFETCH";
/// baker-mq's default `max_in_flight`, which its AMQP ingress takes as
/// prefetch: the relay's default.
pub const DEFAULT_PREFETCH: u16 = 1024;

/// Counts the relay's failures; it reports the first few, never one line
/// per message.
static RELAY_ERRORS: AtomicUsize = AtomicUsize::new(0);

fn relay_error(what: &str, error: impl std::fmt::Display) {
    if RELAY_ERRORS.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!("relay: {what}: {error}");
    }
}

/// What a relay did, printed (to stderr) every [`TALLY_EVERY`] when it
/// changed: how many messages it forwarded and in how many acks, to compare
/// the two relays' batching.
#[derive(Default, PartialEq, Clone, Copy)]
struct Tally {
    relayed: u64,
    acks: u64,
}

const TALLY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Tally {
    /// Prints the tally if it changed since `shown`.
    fn show(&self, client: &str, shown: &mut Tally) {
        if self != shown {
            eprintln!(
                "[{client}] {} relayed, {} acks ({:.1} messages an ack)",
                self.relayed,
                self.acks,
                self.relayed as f64 / self.acks.max(1) as f64
            );
            *shown = *self;
        }
    }
}

/// A timer for the tally, its first tick one period from now.
fn tally_timer() -> tokio::time::Interval {
    let start = tokio::time::Instant::now() + TALLY_EVERY;
    tokio::time::interval_at(start, TALLY_EVERY)
}

/// What a relay needs, from its environment.
struct Settings {
    url: String,
    src: String,
    dst: String,
    prefetch: u16,
    /// The connection's name, as the broker shows it.
    name: String,
}

/// Tells the parent the relay consumes (see `procs::spawn_self`).
fn ready() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
}

/// The relay process's entry point: the client `BAKER_BENCH_AMQP_RELAY`
/// names, until the parent goes away.
pub fn relay_main() {
    let client = std::env::var(RELAY_ENV).expect("relay client");
    let settings = Settings {
        url: std::env::var(RELAY_URL_ENV).expect("relay URL"),
        src: std::env::var(RELAY_SRC_ENV).expect("relay source queue"),
        dst: std::env::var(RELAY_DST_ENV).expect("relay destination queue"),
        prefetch: env_or(RELAY_PREFETCH_ENV, DEFAULT_PREFETCH).max(1),
        name: format!("baker-bench-relay-{client}"),
    };
    match client.as_str() {
        "lapin" => run_relay(lapin_relay(settings, false)),
        "lapin-await" => run_relay(lapin_relay(settings, true)),
        "amqprs" => run_relay(amqprs_relay(settings)),
        other => panic!("{RELAY_ENV}={other:?}: expected lapin, lapin-await or amqprs"),
    }
}

// ---------------------------------------------------------------------------
// lapin.

/// The relay on lapin. `await_writes`: wait until lapin's I/O thread has
/// written each publish before taking the next delivery, as baker-mq's
/// publisher task does (`adapters/amqp/src/publisher.rs`); otherwise each
/// publish is handed over and the relay goes on, its write and confirm
/// awaited with the confirm.
async fn lapin_relay(settings: Settings, await_writes: bool) {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{Acker, Confirmation, Connection, ConnectionProperties};

    let properties =
        ConnectionProperties::default().with_connection_name(settings.name.as_str().into());
    let connection = Connection::connect(&settings.url, properties)
        .await
        .expect("relay connects (lapin)");
    let consuming = connection.create_channel().await.expect("consumer channel");
    consuming
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let publishing = connection
        .create_channel()
        .await
        .expect("publisher channel");
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut deliveries = consuming
        .basic_consume(
            settings.src.as_str().into(),
            "baker-bench-relay".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    ready();

    let dst = lapin::types::ShortString::from(settings.dst.as_str());
    // Publishes awaiting their confirm, in publish order, with the original
    // delivery each settles.
    type Pending = futures::future::BoxFuture<'static, lapin::Result<Confirmation>>;
    let mut in_flight: VecDeque<(Pending, Acker)> = VecDeque::new();
    let (mut tally, mut shown, mut timer) = (Tally::default(), Tally::default(), tally_timer());
    loop {
        tokio::select! {
            _ = timer.tick() => tally.show(&settings.name, &mut shown),
            delivery = deliveries.next() => {
                let delivery = match delivery {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return relay_error("consume", e),
                    None => return relay_error("consume", "consumer cancelled"),
                };
                let properties = delivery.properties.with_delivery_mode(2);
                let mut pending: Pending = if await_writes {
                    let options = BasicPublishOptions::default();
                    let published = publishing
                        .basic_publish("".into(), dst.clone(), options, &delivery.data, properties)
                        .await;
                    match published {
                        Ok(confirm) => Box::pin(confirm),
                        Err(e) => Box::pin(futures::future::ready(Err(e))),
                    }
                } else {
                    let (channel, dst, data) = (publishing.clone(), dst.clone(), delivery.data);
                    Box::pin(async move {
                        let options = BasicPublishOptions::default();
                        channel
                            .basic_publish("".into(), dst, options, &data, properties)
                            .await?
                            .await
                    })
                };
                // Poll it once now: without `await_writes`, that is what
                // queues the publish for lapin's I/O thread (in order).
                if let Some(done) = (&mut pending).now_or_never() {
                    pending = Box::pin(futures::future::ready(done));
                }
                in_flight.push_back((pending, delivery.acker));
                tally.relayed += 1;
            }
            confirm = async { (&mut in_flight.front_mut().expect("a publish in flight").0).await },
                if !in_flight.is_empty() =>
            {
                // The oldest confirm, then every later one already in: one run.
                let (_, acker) = in_flight.pop_front().expect("a publish in flight");
                let mut settled = vec![(confirm, acker)];
                while let Some((next, _)) = in_flight.front_mut() {
                    match next.now_or_never() {
                        Some(confirm) => {
                            let (_, acker) = in_flight.pop_front().expect("a publish in flight");
                            settled.push((confirm, acker));
                        }
                        None => break,
                    }
                }
                let mut last_ack: Option<Acker> = None;
                for (confirm, acker) in settled {
                    match confirm {
                        Ok(Confirmation::Ack(_)) => last_ack = Some(acker),
                        other => {
                            relay_error("confirm", format!("{other:?}"));
                            // Ack what came before, then hand this one back.
                            if let Some(acked) = last_ack.take() {
                                let _ = acked.ack(BasicAckOptions { multiple: true }).await;
                            }
                            let requeue = BasicNackOptions { requeue: true, ..Default::default() };
                            let _ = acker.nack(requeue).await;
                        }
                    }
                }
                if let Some(acker) = last_ack {
                    if let Err(e) = acker.ack(BasicAckOptions { multiple: true }).await {
                        return relay_error("ack", e);
                    }
                    tally.acks += 1;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// amqprs.

/// A publish confirm as amqprs's channel callback reports it: the publish's
/// delivery tag, whether it covers every earlier one, ack or nack.
struct Confirmed {
    tag: u64,
    multiple: bool,
    ack: bool,
}

/// The publisher channel's callback: hands every confirm to the relay.
struct ConfirmForwarder(tokio::sync::mpsc::UnboundedSender<Confirmed>);

#[async_trait::async_trait]
impl amqprs::callbacks::ChannelCallback for ConfirmForwarder {
    async fn close(
        &mut self,
        _: &amqprs::channel::Channel,
        close: amqprs::CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        relay_error("publisher channel closed", close);
        Ok(())
    }

    async fn cancel(
        &mut self,
        _: &amqprs::channel::Channel,
        _: amqprs::Cancel,
    ) -> Result<(), amqprs::error::Error> {
        Ok(())
    }

    async fn flow(
        &mut self,
        _: &amqprs::channel::Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &amqprs::channel::Channel, ack: amqprs::Ack) {
        let _ = self.0.send(Confirmed {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
            ack: true,
        });
    }

    async fn publish_nack(&mut self, _: &amqprs::channel::Channel, nack: amqprs::Nack) {
        let _ = self.0.send(Confirmed {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
            ack: false,
        });
    }

    async fn publish_return(
        &mut self,
        _: &amqprs::channel::Channel,
        ret: amqprs::Return,
        _: amqprs::BasicProperties,
        _: Vec<u8>,
    ) {
        relay_error("returned", ret);
    }
}

/// The parts of an AMQP URL amqprs's connection arguments take (lapin's
/// parser, so both relays read the URL alike).
fn amqprs_arguments(settings: &Settings) -> amqprs::connection::OpenConnectionArguments {
    let uri: lapin::uri::AMQPUri = settings.url.parse().expect("relay URL parses");
    let mut arguments = amqprs::connection::OpenConnectionArguments::new(
        &uri.authority.host,
        uri.authority.port,
        &uri.authority.userinfo.username,
        &uri.authority.userinfo.password,
    );
    arguments
        .virtual_host(&uri.vhost)
        .connection_name(&settings.name);
    arguments
}

async fn amqprs_relay(settings: Settings) {
    use amqprs::channel::{
        BasicAckArguments, BasicConsumeArguments, BasicNackArguments, BasicPublishArguments,
        BasicQosArguments, ConfirmSelectArguments,
    };
    use amqprs::connection::Connection;

    let connection = Connection::open(&amqprs_arguments(&settings))
        .await
        .expect("relay connects (amqprs)");
    let consuming = connection
        .open_channel(None)
        .await
        .expect("consumer channel");
    consuming
        .basic_qos(BasicQosArguments::new(0, settings.prefetch, false))
        .await
        .expect("basic.qos");
    let publishing = connection
        .open_channel(None)
        .await
        .expect("publisher channel");
    let (confirm_tx, mut confirms) = tokio::sync::mpsc::unbounded_channel();
    publishing
        .register_callback(ConfirmForwarder(confirm_tx))
        .await
        .expect("channel callback");
    publishing
        .confirm_select(ConfirmSelectArguments::default())
        .await
        .expect("confirm.select");
    let consume = BasicConsumeArguments::new(&settings.src, "baker-bench-relay")
        .manual_ack(true)
        .finish();
    let (_, mut deliveries) = consuming
        .basic_consume_rx(consume)
        .await
        .expect("basic.consume");
    ready();

    let route = BasicPublishArguments::new("", &settings.dst);
    // Publishes awaiting their confirm, in publish order: (the publish's
    // sequence number on the publisher channel, the original's delivery tag).
    let mut in_flight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut next_seq = 1u64;
    let (mut tally, mut shown, mut timer) = (Tally::default(), Tally::default(), tally_timer());
    loop {
        tokio::select! {
            _ = timer.tick() => tally.show(&settings.name, &mut shown),
            message = deliveries.recv() => {
                let Some(message) = message else {
                    return relay_error("consume", "consumer cancelled");
                };
                let (Some(deliver), Some(content)) = (message.deliver, message.content) else {
                    relay_error("consume", "a delivery without its method or content");
                    continue;
                };
                let tag = deliver.delivery_tag();
                let mut properties = message.basic_properties.unwrap_or_default();
                properties.with_persistence(true);
                match publishing.basic_publish(properties, content, route.clone()).await {
                    Ok(()) => {
                        in_flight.push_back((next_seq, tag));
                        next_seq += 1;
                        tally.relayed += 1;
                    }
                    Err(e) => {
                        relay_error("publish", e);
                        let _ = consuming.basic_nack(BasicNackArguments::new(tag, false, true)).await;
                    }
                }
            }
            confirmed = confirms.recv() => {
                let Some(first) = confirmed else {
                    return relay_error("confirms", "publisher channel gone");
                };
                // This confirm, then every later one already in: one run.
                let mut batch = vec![first];
                while let Ok(more) = confirms.try_recv() {
                    batch.push(more);
                }
                let mut last_ack: Option<u64> = None;
                for confirmed in batch {
                    while let Some(&(seq, tag)) = in_flight.front() {
                        let covered = if confirmed.multiple {
                            seq <= confirmed.tag
                        } else {
                            seq == confirmed.tag
                        };
                        if !covered {
                            break;
                        }
                        in_flight.pop_front();
                        if confirmed.ack {
                            last_ack = Some(tag);
                        } else {
                            relay_error("confirm", "nack");
                            if let Some(acked) = last_ack.take() {
                                let _ = consuming.basic_ack(BasicAckArguments::new(acked, true)).await;
                            }
                            let _ = consuming.basic_nack(BasicNackArguments::new(tag, false, true)).await;
                        }
                    }
                }
                if let Some(tag) = last_ack {
                    if let Err(e) = consuming.basic_ack(BasicAckArguments::new(tag, true)).await {
                        return relay_error("ack", e);
                    }
                    tally.acks += 1;
                }
            }
        }
    }
}
