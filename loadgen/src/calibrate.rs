//! `calibrate`: how fast this machine's cores are right now, as a fixed single-threaded
//! workload timed several times. The benchmark figures of one day can only be compared with
//! another day's when the machine ran at the same speed; on a shared virtual machine it does
//! not (the same binaries have measured 15–25 % apart on different days), so `make bench`
//! records this figure before and after its runs.
//!
//! The workload is what the server does most, on one core: JSON text parsed into a typed
//! value and written back, and integers sorted (hashing, ordering and memory traffic). The same
//! code and input every time, so its time moves only with the machine.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct Calibrate {
    /// Timed rounds of the fixed workload (the median is the figure).
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
}

#[derive(Serialize)]
pub struct Calibration {
    pub scenario: &'static str,
    pub rounds: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    /// A checksum of the work, so the optimiser cannot drop it (and the work is the same).
    pub checksum: u64,
}

#[derive(Serialize, Deserialize)]
struct Message {
    #[serde(rename = "type")]
    kind: String,
    conversation_id: String,
    seq: i64,
    sender_id: String,
    body: String,
    created_at: String,
}

/// How much one round does.
struct Workload {
    frames: u64,
    numbers: usize,
}

/// The figure's workload: 100,000 frames parsed and written back, 2,000,000 integers sorted.
const ROUND: Workload = Workload {
    frames: 100_000,
    numbers: 2_000_000,
};

fn round(workload: &Workload, seed: u64) -> u64 {
    let mut checksum = seed;
    for index in 0..workload.frames {
        let text = format!(
            r#"{{"type":"message.created","conversation_id":"0192f0c4-1b2a-7c3d-8e4f-{index:012x}","seq":{index},"sender_id":"0192f0c4-1b2a-7c3d-8e4f-5a6b7c8d9e0f","body":"lg:{index}:calibration text of a chat message","created_at":"2026-11-25T04:00:00.000000Z"}}"#
        );
        if let Ok(message) = serde_json::from_str::<Message>(&text) {
            checksum = checksum.wrapping_add(message.seq as u64);
            if let Ok(written) = serde_json::to_string(&message) {
                checksum = checksum.wrapping_add(written.len() as u64);
            }
        }
    }
    let mut state = seed | 1;
    let mut numbers: Vec<u64> = (0..workload.numbers)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
        .collect();
    numbers.sort_unstable();
    numbers
        .iter()
        .step_by(1_000)
        .fold(checksum, |sum, number| sum.wrapping_add(*number))
}

pub fn run(calibrate: &Calibrate) -> Calibration {
    measure(&ROUND, calibrate.rounds)
}

fn measure(workload: &Workload, rounds: usize) -> Calibration {
    let rounds = rounds.max(1);
    let mut checksum = 0;
    // One round unmeasured: page faults and the allocator's first growth.
    checksum ^= round(workload, 1);
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            checksum ^= round(workload, 1);
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    let ms = |time: Duration| time.as_secs_f64() * 1000.0;
    Calibration {
        scenario: "calibrate",
        rounds,
        min_ms: ms(times[0]),
        median_ms: ms(times[rounds / 2]),
        max_ms: ms(times[rounds - 1]),
        checksum,
    }
}

impl Calibration {
    pub fn table(&self) -> String {
        format!(
            "scenario calibrate: a fixed single-threaded workload, {} rounds\n\
             | min ms | median ms | max ms |\n|---|---|---|\n| {:.1} | {:.1} | {:.1} |",
            self.rounds, self.min_ms, self.median_ms, self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_the_same_every_time() {
        let small = Workload {
            frames: 200,
            numbers: 5_000,
        };
        assert_eq!(round(&small, 1), round(&small, 1));
        assert_ne!(round(&small, 1), round(&small, 2));
        let calibration = measure(&small, 3);
        assert_eq!(calibration.rounds, 3);
        assert!(calibration.min_ms > 0.0);
        assert!(calibration.min_ms <= calibration.median_ms);
        assert!(calibration.median_ms <= calibration.max_ms);
    }
}
