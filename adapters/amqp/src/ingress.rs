//! Consuming the shared ingress queue, with acknowledgements that wait for
//! the egress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baker_adapter_api::{
    header, new_message_id, AckHandle, Delivery, Destination, Ingress, IngressStatus, Message,
    Native, SendError, Settle, Settlement, Settling,
};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::Acker;
use lapin::{BasicProperties, Channel, Consumer, ExchangeKind};

use crate::acks::{Acks, Verdict};
use crate::convert;
use crate::link::{redact, Link};
use crate::publisher::{Publish, Publisher};
use crate::AmqpError;

/// Pause before handing a message back to the broker, so a message whose
/// instance's broker is down does not come straight back, over and over.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// The names of the ingress topology.
#[derive(Clone, Debug)]
pub struct Names {
    pub exchange: ShortString,
    pub queue: ShortString,
    pub dlx: ShortString,
    pub dead_letters: ShortString,
}

impl Names {
    pub fn new(prefix: &str, group: &str) -> Self {
        Self {
            exchange: prefix.into(),
            queue: format!("{group}.ingress").into(),
            dlx: format!("{prefix}.dlx").into(),
            dead_letters: format!("{prefix}.dead-letters").into(),
        }
    }
}

pub struct AmqpIngress {
    link: Arc<Link>,
    publisher: Publisher,
    names: Names,
    prefetch: u16,
    consumer: Option<(Channel, Consumer)>,
    /// Settles the current channel's deliveries.
    acks: Acks,
    consumer_tag: ShortString,
    closing: bool,
    outage_reported: bool,
    retry: Duration,
    /// The connection attempt under way, kept across calls to `next`: the
    /// router drops a pending `next` whenever another message finishes, and
    /// a consumer made by an attempt dropped halfway would hold a prefetch
    /// of messages that nobody reads.
    connecting: Option<tokio::task::JoinHandle<Result<(Channel, Consumer), AmqpError>>>,
    /// No new attempt before this, after a failed one.
    retry_at: Option<tokio::time::Instant>,
    /// Whether a consumer is running, for the health endpoints.
    consuming: Arc<AtomicBool>,
}

/// Opens a channel on `link`, declares the topology and starts consuming.
async fn open_consumer(
    link: Arc<Link>,
    names: Names,
    prefetch: u16,
    consumer_tag: ShortString,
) -> Result<(Channel, Consumer), AmqpError> {
    let channel = link.open_channel().await?;
    let setup = async {
        declare(&channel, &names).await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        channel
            .basic_consume(
                names.queue.clone(),
                consumer_tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    };
    match setup.await {
        Ok(consumer) => Ok((channel, consumer)),
        Err(error) => {
            link.reset();
            Err(AmqpError::Setup {
                role: "ingress",
                queue: names.queue.to_string(),
                source: error,
            })
        }
    }
}

async fn declare(channel: &Channel, names: &Names) -> lapin::Result<()> {
    declare_pair(channel, &names.exchange, &names.queue).await?;
    declare_dead_letters(channel, names).await
}

/// Declares the dead-letter exchange and queue of `names` (the routers'
/// own, where instances' queues dead-letter what their consumers refuse).
pub(crate) async fn declare_dead_letters(channel: &Channel, names: &Names) -> lapin::Result<()> {
    declare_pair(channel, &names.dlx, &names.dead_letters).await
}

/// A durable topic exchange and a durable queue bound to all of it.
async fn declare_pair(
    channel: &Channel,
    exchange: &ShortString,
    queue: &ShortString,
) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let none = FieldTable::default;
    channel
        .exchange_declare(
            exchange.clone(),
            ExchangeKind::Topic,
            durable_exchange,
            none(),
        )
        .await?;
    channel
        .queue_declare(queue.clone(), durable_queue, none())
        .await?;
    channel
        .queue_bind(
            queue.clone(),
            exchange.clone(),
            "#".into(),
            QueueBindOptions::default(),
            none(),
        )
        .await?;
    Ok(())
}

impl AmqpIngress {
    pub fn new(link: Arc<Link>, publisher: Publisher, names: Names, prefetch: u16) -> Self {
        Self {
            link,
            publisher,
            names,
            prefetch: prefetch.max(1),
            consumer: None,
            acks: Acks::start(),
            consumer_tag: format!("baker-{:x}", std::process::id()).into(),
            closing: false,
            outage_reported: false,
            retry: Duration::from_millis(200),
            connecting: None,
            retry_at: None,
            consuming: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Declares the topology and starts consuming. Cancel-safe: dropped
    /// halfway, the attempt goes on and the next call takes its result.
    pub async fn connect(&mut self) -> Result<(), AmqpError> {
        let attempt = self.connecting.get_or_insert_with(|| {
            tokio::spawn(open_consumer(
                self.link.clone(),
                self.names.clone(),
                self.prefetch,
                self.consumer_tag.clone(),
            ))
        });
        let result = attempt.await;
        self.connecting = None;
        match result {
            Ok(Ok((channel, consumer))) => {
                tracing::info!(broker = %redact(self.link.url()), queue = %self.names.queue, "consuming AMQP ingress");
                self.consumer = Some((channel, consumer));
                self.consuming.store(true, Ordering::Relaxed);
                self.acks = Acks::start();
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(error) => Err(AmqpError::Attempt(error)),
        }
    }

    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        let routing_key = delivery.routing_key.as_str();
        let destination = Destination::from_address(routing_key, '.');
        let (mut headers, reply_to, properties) = convert::from_amqp(&delivery.properties);
        // At least once: Baker's id, for consumers and inboxes to dedupe on
        // (RabbitMQ gives a redelivery no identity to keep it by).
        headers.insert(header::MSG_ID, new_message_id());
        let native = Arc::new(delivery.properties);
        let payload = Bytes::from(delivery.data);
        let ack = AckHandle::new(DeliverySettler {
            tag: delivery.delivery_tag,
            acker: delivery.acker,
            acks: self.acks.clone(),
            publisher: self.publisher.clone(),
            dlx: self.names.dlx.clone(),
            routing_key: delivery.routing_key,
            payload: payload.clone(),
            properties: native.clone(),
        });
        Delivery {
            message: Message {
                payload,
                headers,
                reply_to,
                properties,
                native: Some(Native::new(crate::NAME, native)),
            },
            destination,
            ack,
        }
    }
}

#[async_trait]
impl Ingress for AmqpIngress {
    fn status(&self) -> IngressStatus {
        IngressStatus::flag(self.consuming.clone())
    }

    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Some((_, consumer)) = self.consumer.as_mut() else {
                if self.closing {
                    return None;
                }
                if let Some(at) = self.retry_at {
                    tokio::time::sleep_until(at).await;
                    self.retry_at = None;
                }
                match self.connect().await {
                    Ok(()) => {
                        if self.outage_reported {
                            tracing::info!("AMQP ingress resumed; unacked messages were redelivered by the broker");
                        }
                        self.outage_reported = false;
                        self.retry = Duration::from_millis(200);
                    }
                    Err(error) => {
                        if !self.outage_reported {
                            tracing::warn!(%error, "AMQP ingress unavailable; reconnecting with backoff");
                            self.outage_reported = true;
                        }
                        self.retry_at = Some(tokio::time::Instant::now() + self.retry);
                        self.retry = (self.retry * 2).min(Duration::from_secs(10));
                    }
                }
                continue;
            };
            match consumer.next().await {
                Some(Ok(delivery)) => return Some(self.delivery(delivery)),
                Some(Err(error)) => {
                    tracing::warn!(%error, "AMQP ingress lost; reconnecting");
                    self.outage_reported = true;
                    self.consumer = None;
                    self.consuming.store(false, Ordering::Relaxed);
                    self.link.reset();
                }
                None if self.closing => return None,
                None => {
                    tracing::warn!("AMQP ingress consumer cancelled by the broker; reconnecting");
                    self.consumer = None;
                    self.consuming.store(false, Ordering::Relaxed);
                }
            }
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        let (_, consumer) = self.consumer.as_mut()?;
        match consumer.next().now_or_never()?? {
            Ok(delivery) => Some(self.delivery(delivery)),
            // Handled (reconnection) by the next call to `next`.
            Err(_) => None,
        }
    }

    async fn close(&mut self) {
        self.closing = true;
        if let Some((channel, _)) = &self.consumer {
            // Deliveries already received still come out of the consumer;
            // the broker requeues whatever is left unacked when the channel
            // closes.
            if let Err(error) = channel
                .basic_cancel(self.consumer_tag.clone(), BasicCancelOptions::default())
                .await
            {
                tracing::debug!(%error, "cancelling the AMQP consumer");
                self.consumer = None;
            }
        }
    }

    async fn finish(&mut self) {
        self.acks.flush().await;
        // Closing the channel waits for the broker's close-ok, which comes
        // after it has processed every acknowledgement sent before; what is
        // left unacked goes back to the queue for the other routers.
        if let Some((channel, _)) = self.consumer.take() {
            if let Err(error) = channel.close(200, "router stopping".into()).await {
                tracing::debug!(%error, "closing the AMQP ingress channel");
            }
        }
    }
}

/// Logs a failed dead-lettering at most every 10 s, with how many failed
/// since the last line: a dead-letter exchange with nowhere to put messages
/// fails them all, again at each redelivery.
fn report_dead_letter_failure(error: &SendError) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static FAILED: AtomicU64 = AtomicU64::new(0);
    static LAST_LOG_SECS: AtomicU64 = AtomicU64::new(0);
    let failed = FAILED.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_LOG_SECS.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_LOG_SECS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        FAILED.store(0, Ordering::Relaxed);
        tracing::warn!(%error, failed,
            "could not dead-letter messages; they are handed back to the ingress for redelivery");
    }
}

/// Settles one AMQP delivery: ack, requeue, or republish to the
/// dead-letter exchange and ack once that is confirmed.
struct DeliverySettler {
    tag: u64,
    acker: Acker,
    acks: Acks,
    publisher: Publisher,
    dlx: ShortString,
    routing_key: ShortString,
    payload: Bytes,
    properties: Arc<BasicProperties>,
}

impl DeliverySettler {
    fn verdict(self, requeue: bool) {
        self.acks.settle(Verdict {
            tag: self.tag,
            acker: self.acker,
            requeue,
        });
    }

    async fn dead_letter(&self, reason: &str, attempts: u32) -> Result<(), SendError> {
        self.publisher
            .publish(Publish {
                exchange: self.dlx.clone(),
                routing_key: self.routing_key.clone(),
                // A dead-letter exchange with no queue bound would drop the
                // message while the original is acked: have it come back,
                // and the original is redelivered instead.
                mandatory: true,
                payload: self.payload.clone(),
                properties: convert::dead_lettered(&self.properties, reason, attempts),
            })
            .await
    }
}

impl DeliverySettler {
    /// Tells a requester waiting for a reply that none will come, and why:
    /// an empty reply with the reason in `baker-error`, as on NATS. Best
    /// effort: the message itself is safe in the dead-letter queue.
    async fn answer_requester(&self, reason: &str) {
        let Some(reply_to) = self.properties.reply_to().clone() else {
            return;
        };
        let mut headers = FieldTable::default();
        headers.insert(
            header::ERROR.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        let mut properties = BasicProperties::default().with_headers(headers);
        if let Some(id) = self.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let answered = self
            .publisher
            .publish(Publish {
                exchange: ShortString::from(""),
                routing_key: reply_to,
                mandatory: false,
                payload: Bytes::new(),
                properties,
            })
            .await;
        if let Err(error) = answered {
            tracing::debug!(%error, "could not send an error reply");
        }
    }
}

impl Settle for DeliverySettler {
    fn settle(self: Box<Self>, outcome: Settlement) -> Settling {
        let requeue = match outcome {
            // The common case settles at once, with nothing left to wait for.
            Settlement::Delivered => {
                self.verdict(false);
                return Settling::done();
            }
            Settlement::DeadLetter {
                reason, attempts, ..
            } => Some((reason, attempts)),
            Settlement::Requeue { .. } => None,
        };
        Settling::later(async move {
            let requeue = match requeue {
                Some((reason, attempts)) => match self.dead_letter(&reason, attempts).await {
                    Ok(()) => {
                        self.answer_requester(&reason).await;
                        false
                    }
                    Err(error) => {
                        report_dead_letter_failure(&error);
                        true
                    }
                },
                None => true,
            };
            if requeue {
                tokio::time::sleep(REQUEUE_PAUSE).await;
            }
            self.verdict(requeue);
        })
    }
}
