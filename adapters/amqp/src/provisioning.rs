//! Provisioning: the inbox queues of the instances an agent registers
//! (durable, dead-lettering to Baker's dead letters), their backlog while
//! draining, and removing what a departed instance or group leaves.

use std::collections::BTreeMap;

use async_trait::async_trait;
use baker_adapter_api::{Adapter, AdapterError, Endpoint, IngressOptions, Provisioning};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::ingress::{self, Names};
use crate::{broker_error, check_url, AmqpAdapter};

/// The queue argument naming where a queue dead-letters.
const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";

impl AmqpAdapter {
    /// Declares the inbox queue of `endpoint` on a channel of its own: a
    /// refused declaration (a queue of another type, a passive declare of a
    /// missing queue) closes the channel it was made on, which must not be
    /// the one carrying the egress publishes.
    async fn declare_inbox(
        &self,
        endpoint: &Endpoint,
        options: QueueDeclareOptions,
        arguments: FieldTable,
        doing: &str,
    ) -> Result<lapin::Queue, AdapterError> {
        let channel = self.own_channel(&endpoint.broker).await?;
        let declared = channel
            .queue_declare(endpoint.inbox.as_str().into(), options, arguments)
            .await;
        let _ = channel.close(200, "inbox declared".into()).await;
        declared.map_err(|error| {
            broker_error(
                &endpoint.broker,
                format!("{doing} inbox queue {}: {error}", endpoint.inbox),
            )
        })
    }

    /// Deletes `queue` if it is empty, on a channel of its own (a refusal
    /// closes the channel).
    async fn delete_if_empty(&self, broker: &str, queue: &str) -> Result<(), AdapterError> {
        check_url(broker)?;
        let channel = self.own_channel(broker).await?;
        let options = QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        };
        let deleted = channel.queue_delete(queue.into(), options).await;
        let _ = channel.close(200, "queue deleted".into()).await;
        deleted
            .map(drop)
            .map_err(|error| broker_error(broker, format!("deleting queue {queue}: {error}")))
    }

    /// A channel for one request, apart from the one carrying the egress
    /// publishes.
    async fn own_channel(&self, broker: &str) -> Result<lapin::Channel, AdapterError> {
        let (link, _) = self.link(broker);
        link.open_channel()
            .await
            .map_err(|reason| broker_error(broker, reason))
    }
}

#[async_trait]
impl Provisioning for AmqpAdapter {
    /// Declares the inbox queue, durable. Metadata key `queue_type`:
    /// `classic` (default) or `quorum`.
    async fn prepare_inbox(
        &self,
        endpoint: &Endpoint,
        options: &BTreeMap<String, String>,
        prefix: &str,
    ) -> Result<(), AdapterError> {
        check_url(&endpoint.broker)?;
        self.validate_inbox(&endpoint.inbox)?;
        let mut arguments = FieldTable::default();
        match options.get("queue_type").map(String::as_str) {
            None | Some("classic") => {}
            Some("quorum") => {
                arguments.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString(LongString::from("quorum")),
                );
            }
            Some(other) => {
                return Err(AdapterError::InvalidInbox {
                    inbox: endpoint.inbox.clone(),
                    reason: format!("queue_type {other:?}: expected classic or quorum"),
                })
            }
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        // What the instance rejects (basic.reject or basic.nack without
        // requeue) goes to the routers' dead letters, with RabbitMQ's
        // `x-death` saying why and from where.
        let names = Names::new(prefix, "");
        let channel = self.own_channel(&endpoint.broker).await?;
        let declared = ingress::declare_dead_letters(&channel, &names).await;
        let _ = channel.close(200, "dead letters declared".into()).await;
        declared
            .map_err(|e| broker_error(&endpoint.broker, format!("declaring {}: {e}", names.dlx)))?;
        let mut with_dead_letters = arguments.clone();
        with_dead_letters.insert(
            DEAD_LETTER_EXCHANGE.into(),
            AMQPValue::LongString(names.dlx.as_str().into()),
        );
        match self
            .declare_inbox(endpoint, durable, with_dead_letters, "declaring")
            .await
        {
            Ok(_) => Ok(()),
            // A queue declared before Baker set a dead-letter exchange on
            // inboxes cannot take one by a new declaration: it keeps what it
            // has, and a policy gives it one (docs/protocols.md).
            Err(error) if error.to_string().contains(DEAD_LETTER_EXCHANGE) => {
                tracing::warn!(inbox = %endpoint.inbox, dlx = %names.dlx,
                    "this inbox queue was declared without a dead-letter exchange argument, and a queue's arguments cannot change: \
                     what its consumer rejects goes where a RabbitMQ policy says, else nowhere (docs/protocols.md)");
                self.declare_inbox(endpoint, durable, arguments, "declaring")
                    .await
                    .map(drop)
            }
            Err(error) => Err(error),
        }
    }

    /// The inbox queue's ready messages (a passive declare). Messages the
    /// instance holds unacknowledged are not counted: AMQP does not report
    /// them, so the instance must finish them before it exits.
    async fn inbox_backlog(&self, endpoint: &Endpoint) -> Result<Option<u64>, AdapterError> {
        check_url(&endpoint.broker)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = self
            .declare_inbox(endpoint, passive, FieldTable::default(), "reading")
            .await?;
        Ok(Some(u64::from(queue.message_count())))
    }

    /// Deletes the inbox queue if it is empty.
    async fn remove_inbox(&self, endpoint: &Endpoint) -> Result<(), AdapterError> {
        self.delete_if_empty(&endpoint.broker, &endpoint.inbox)
            .await
    }

    /// Deletes the group's ingress queue if it is empty. The exchanges and
    /// the dead-letter queue stay: other groups share them.
    async fn remove_ingress(
        &self,
        broker: &str,
        options: &IngressOptions,
    ) -> Result<(), AdapterError> {
        let names = Names::new(&options.prefix, &options.queue_group);
        self.delete_if_empty(broker, names.queue.as_str()).await
    }
}
