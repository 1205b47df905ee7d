//! The broker objects, all named under the namespace so instances never cross.
//!
//! Every message the relay publishes carries a run of events (ADR 0018), routing key `events`.
//!
//! ```text
//! {ns}.events (topic) --#--> {ns}.projector (quorum, delivery limit) --dead letter--> {ns}.dlx
//!                      --#--> {ns}.push (quorum, single active consumer) --> {ns}.dlx
//! {ns}.dlx (direct)   --projector--> {ns}.projector.dlq (quorum)
//!                     --push-------> {ns}.push.dlq (quorum)
//! ```

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// How often a message is delivered before it is dead-lettered. RabbitMQ 3.10 (Debian's) has
/// no default limit on quorum queues, so we always set one.
pub const DELIVERY_LIMIT: i64 = 5;

#[derive(Clone, Debug)]
pub struct Topology {
    namespace: String,
}

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.namespace)
    }

    pub fn projector_queue(&self) -> String {
        format!("{}.projector", self.namespace)
    }

    pub fn projector_dead_letter_queue(&self) -> String {
        format!("{}.projector.dlq", self.namespace)
    }

    /// The queue socket-push routes events from. Single active consumer: one node at a time
    /// routes, so every conversation's events go out in order.
    pub fn push_queue(&self) -> String {
        format!("{}.push", self.namespace)
    }

    pub fn push_dead_letter_queue(&self) -> String {
        format!("{}.push.dlq", self.namespace)
    }

    /// Declares every exchange, queue and binding. Idempotent: every role calls it at start.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        self.declare_worker_queue(channel, &self.projector_queue(), "projector", false)
            .await?;
        self.declare_worker_queue(channel, &self.push_queue(), "push", true)
            .await?;
        for queue in [self.projector_queue(), self.push_queue()] {
            channel
                .queue_bind(
                    queue.into(),
                    self.events_exchange().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// A quorum queue with a delivery limit whose rejects land in `{queue}.dlq`.
    async fn declare_worker_queue(
        &self,
        channel: &Channel,
        queue: &str,
        dead_letter_key: &str,
        single_active_consumer: bool,
    ) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let dead_letter_queue = format!("{queue}.dlq");
        channel
            .queue_declare(dead_letter_queue.as_str().into(), durable, quorum())
            .await?;
        channel
            .queue_bind(
                dead_letter_queue.as_str().into(),
                self.dead_letter_exchange().into(),
                dead_letter_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut arguments = quorum();
        arguments.insert(
            ShortString::from("x-delivery-limit"),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange())),
        );
        arguments.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(dead_letter_key)),
        );
        if single_active_consumer {
            arguments.insert(
                ShortString::from("x-single-active-consumer"),
                AMQPValue::Boolean(true),
            );
        }
        channel
            .queue_declare(queue.into(), durable, arguments)
            .await?;
        Ok(())
    }

    /// Deletes every queue and exchange of the namespace (retiring a tenant, or a test).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for queue in [
            self.projector_queue(),
            self.projector_dead_letter_queue(),
            self.push_queue(),
            self.push_dead_letter_queue(),
        ] {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [self.events_exchange(), self.dead_letter_exchange()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// Messages waiting in a queue (a passive declare), for metrics and tests.
    pub async fn queue_depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await?;
        Ok(queue.message_count())
    }
}

fn quorum() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    arguments
}
