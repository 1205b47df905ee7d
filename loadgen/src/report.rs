//! The figures of one run: a table for people, JSON for tools.

use serde::Serialize;

use crate::run::Outcome;
use crate::setup::World;
use crate::{Load, Transport};

#[derive(Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

#[derive(Serialize)]
pub struct Report {
    pub scenario: String,
    pub transport: Transport,
    pub users: usize,
    pub conversations: usize,
    pub members_per_conversation: usize,
    pub offered_rate: f64,
    pub seconds: f64,
    pub offered: u64,
    pub accepted: u64,
    pub refused: u64,
    pub overloaded: u64,
    /// Messages accepted per second of sending.
    pub accepted_rate: f64,
    /// Frames delivered to recipients (not senders) per second, from the first due send to
    /// the last delivery.
    pub delivered_rate: f64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub latency: Latency,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub reconnects: u64,
    /// Resumes answered `recovered: false`.
    pub unrecovered: u64,
    pub error_samples: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, load: &Load, world: &World, outcome: Outcome) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let histogram = &outcome.latencies;
        Self {
            scenario: scenario.to_owned(),
            transport: load.transport,
            users: world.users.len(),
            conversations: world.conversations.len(),
            members_per_conversation: world
                .conversations
                .first()
                .map_or(0, |conversation| conversation.members.len()),
            offered_rate: load.rate,
            seconds: load.seconds,
            offered: outcome.offered,
            accepted: outcome.accepted,
            refused: outcome.refused,
            overloaded: outcome.overloaded,
            accepted_rate: outcome.accepted as f64 / outcome.send_seconds.max(0.001),
            delivered_rate: outcome.delivered as f64 / outcome.receive_seconds.max(0.001),
            delivered: outcome.delivered,
            expected_deliveries: outcome.expected_deliveries,
            latency: Latency {
                p50_ms: ms(histogram.value_at_quantile(0.5)),
                p90_ms: ms(histogram.value_at_quantile(0.9)),
                p99_ms: ms(histogram.value_at_quantile(0.99)),
                p999_ms: ms(histogram.value_at_quantile(0.999)),
                max_ms: ms(histogram.max()),
                samples: histogram.len(),
            },
            lost: outcome.lost,
            duplicated: outcome.duplicated,
            out_of_order: outcome.out_of_order,
            reconnects: outcome.reconnects,
            unrecovered: outcome.unrecovered,
            error_samples: outcome.error_samples,
        }
    }

    pub fn table(&self) -> String {
        let latency = &self.latency;
        let mut lines = vec![
            format!(
                "scenario {} over {:?}: {} users, {} conversations of {}",
                self.scenario,
                self.transport,
                self.users,
                self.conversations,
                self.members_per_conversation
            ),
            "| offered msg/s | accepted msg/s | delivered frames/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | refused | overloaded | lost | duplicated | out of order |".to_owned(),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_owned(),
            format!(
                "| {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                self.offered_rate,
                self.accepted_rate,
                self.delivered_rate,
                latency.p50_ms,
                latency.p90_ms,
                latency.p99_ms,
                latency.p999_ms,
                latency.max_ms,
                self.refused,
                self.overloaded,
                self.lost,
                self.duplicated,
                self.out_of_order
            ),
        ];
        if self.reconnects > 0 {
            lines.push(format!(
                "reconnects: {} (resumed without recovery: {})",
                self.reconnects, self.unrecovered
            ));
        }
        for sample in &self.error_samples {
            lines.push(format!("error sample: {sample}"));
        }
        lines.join("\n")
    }
}
