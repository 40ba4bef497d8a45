//! Load-balancing policies: each picks the instance (or all instances) a
//! message goes to. A policy is built once per routing-view change, holding
//! whatever it precomputes (weights, hash ring); picking takes no lock.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use baker_adapter_api::{header, Message};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// Which policy a service uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The less busy of two random instances (power of two choices over
    /// in-flight sends).
    LeastOutstanding,
    /// At random, in proportion to instance weights.
    Weighted,
    /// By hash of the `baker-key` header on a ring, so a key sticks to an
    /// instance and only about 1/n of keys move when membership changes.
    /// Messages without the header are spread round robin.
    ConsistentHash,
    /// Every routable instance gets a copy.
    Broadcast,
}

impl PolicyKind {
    /// Every policy, in documentation order.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastOutstanding,
        PolicyKind::Weighted,
        PolicyKind::ConsistentHash,
        PolicyKind::Broadcast,
    ];

    /// The name used in config files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastOutstanding => "least_outstanding",
            PolicyKind::Weighted => "weighted",
            PolicyKind::ConsistentHash => "consistent_hash",
            PolicyKind::Broadcast => "broadcast",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown policy {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// What a policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The instance at this index.
    One(usize),
    /// Every instance.
    All,
    /// No instance can take it.
    Nobody,
}

/// What a policy needs to know about each instance.
pub trait Candidate {
    /// Instance id, stable across views (hash ring points derive from it).
    fn id(&self) -> &str;
    /// Relative weight.
    fn weight(&self) -> u32;
    /// Sends in flight to it right now.
    fn outstanding(&self) -> usize;
}

/// A built policy for one service's current instances.
pub enum Policy {
    RoundRobin(AtomicUsize),
    Random,
    LeastOutstanding,
    Weighted {
        cumulative: Vec<u64>,
    },
    ConsistentHash {
        ring: Vec<(u64, u32)>,
        fallback: AtomicUsize,
    },
    Broadcast,
}

/// Points per instance on the consistent-hash ring: enough that each instance
/// owns close to 1/n of the ring (standard deviation a few percent).
const RING_POINTS_PER_INSTANCE: usize = 160;

impl Policy {
    /// Builds `kind` for `instances`.
    pub fn build<C: Candidate>(kind: PolicyKind, instances: &[C]) -> Self {
        match kind {
            PolicyKind::RoundRobin => Policy::RoundRobin(AtomicUsize::new(0)),
            PolicyKind::Random => Policy::Random,
            PolicyKind::LeastOutstanding => Policy::LeastOutstanding,
            PolicyKind::Broadcast => Policy::Broadcast,
            PolicyKind::Weighted => {
                let mut total = 0u64;
                let cumulative = instances
                    .iter()
                    .map(|c| {
                        total += u64::from(c.weight());
                        total
                    })
                    .collect();
                Policy::Weighted { cumulative }
            }
            PolicyKind::ConsistentHash => {
                let mut ring = Vec::with_capacity(instances.len() * RING_POINTS_PER_INSTANCE);
                let mut point = String::new();
                for (index, c) in instances.iter().enumerate() {
                    for n in 0..RING_POINTS_PER_INSTANCE {
                        point.clear();
                        point.push_str(c.id());
                        point.push('#');
                        point.push_str(&n.to_string());
                        ring.push((xxh3_64(point.as_bytes()), index as u32));
                    }
                }
                ring.sort_unstable();
                Policy::ConsistentHash {
                    ring,
                    fallback: AtomicUsize::new(0),
                }
            }
        }
    }

    /// Picks for `message` among `instances` (the same slice the policy was
    /// built with).
    pub fn pick<C: Candidate>(&self, instances: &[C], message: &Message) -> Pick {
        let n = instances.len();
        if n == 0 {
            return Pick::Nobody;
        }
        match self {
            Policy::RoundRobin(next) => Pick::One(next.fetch_add(1, Ordering::Relaxed) % n),
            Policy::Random => Pick::One(fastrand::usize(..n)),
            Policy::LeastOutstanding => {
                let a = fastrand::usize(..n);
                let b = fastrand::usize(..n);
                if instances[b].outstanding() < instances[a].outstanding() {
                    Pick::One(b)
                } else {
                    Pick::One(a)
                }
            }
            Policy::Weighted { cumulative } => match cumulative.last() {
                Some(&total) if total > 0 => {
                    let r = fastrand::u64(..total);
                    Pick::One(cumulative.partition_point(|&c| c <= r))
                }
                // Every weight is 0: nobody asked for traffic.
                _ => Pick::Nobody,
            },
            Policy::ConsistentHash { ring, fallback } => match message.headers.get(header::KEY) {
                Some(key) => {
                    let h = xxh3_64(key.as_bytes());
                    let i = ring.partition_point(|&(p, _)| p < h);
                    let (_, index) = ring[if i == ring.len() { 0 } else { i }];
                    Pick::One(index as usize)
                }
                None => Pick::One(fallback.fetch_add(1, Ordering::Relaxed) % n),
            },
            Policy::Broadcast => Pick::All,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) struct Fake {
        pub id: String,
        pub weight: u32,
        pub outstanding: usize,
    }

    impl Candidate for Fake {
        fn id(&self) -> &str {
            &self.id
        }
        fn weight(&self) -> u32 {
            self.weight
        }
        fn outstanding(&self) -> usize {
            self.outstanding
        }
    }

    pub(crate) fn fakes(n: usize) -> Vec<Fake> {
        (0..n)
            .map(|i| Fake {
                id: format!("instance-{i}"),
                weight: 100,
                outstanding: 0,
            })
            .collect()
    }

    fn keyed(key: &str) -> Message {
        let mut m = Message::default();
        m.headers.insert(header::KEY, key.to_owned());
        m
    }

    fn counts(policy: &Policy, instances: &[Fake], messages: usize) -> Vec<usize> {
        let mut counts = vec![0; instances.len()];
        let msg = Message::default();
        for _ in 0..messages {
            match policy.pick(instances, &msg) {
                Pick::One(i) => counts[i] += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        counts
    }

    #[test]
    fn round_robin_is_exact() {
        let instances = fakes(3);
        let policy = Policy::build(PolicyKind::RoundRobin, &instances);
        assert_eq!(counts(&policy, &instances, 30_000), vec![10_000; 3]);
    }

    #[test]
    fn random_spreads_evenly() {
        let instances = fakes(4);
        let policy = Policy::build(PolicyKind::Random, &instances);
        for c in counts(&policy, &instances, 40_000) {
            assert!((9_000..=11_000).contains(&c), "{c}");
        }
    }

    #[test]
    fn weighted_follows_weights_within_tolerance() {
        let mut instances = fakes(3);
        instances[0].weight = 10;
        instances[1].weight = 30;
        instances[2].weight = 60;
        let policy = Policy::build(PolicyKind::Weighted, &instances);
        let c = counts(&policy, &instances, 100_000);
        for (count, expected) in c.iter().zip([10_000.0, 30_000.0, 60_000.0]) {
            let share = *count as f64 / expected;
            assert!((0.95..=1.05).contains(&share), "{c:?}");
        }
    }

    #[test]
    fn weighted_with_zero_weights_routes_nowhere() {
        let mut instances = fakes(2);
        instances.iter_mut().for_each(|i| i.weight = 0);
        let policy = Policy::build(PolicyKind::Weighted, &instances);
        assert_eq!(policy.pick(&instances, &Message::default()), Pick::Nobody);
    }

    #[test]
    fn least_outstanding_avoids_the_busy_instance() {
        let mut instances = fakes(2);
        instances[0].outstanding = 50;
        let policy = Policy::build(PolicyKind::LeastOutstanding, &instances);
        let c = counts(&policy, &instances, 10_000);
        // Instance 0 only wins when both choices land on it (1/4 of picks).
        assert!(c[0] < 3_000 && c[1] > 7_000, "{c:?}");
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_about_one_nth_of_keys() {
        let four = fakes(4);
        let five = fakes(5);
        let p4 = Policy::build(PolicyKind::ConsistentHash, &four);
        let p5 = Policy::build(PolicyKind::ConsistentHash, &five);
        let keys = 20_000;
        let mut moved = 0;
        let mut per_instance = [0usize; 4];
        for k in 0..keys {
            let msg = keyed(&format!("customer-{k}"));
            let Pick::One(a) = p4.pick(&four, &msg) else {
                panic!()
            };
            assert_eq!(
                p4.pick(&four, &msg),
                Pick::One(a),
                "same key, same instance"
            );
            per_instance[a] += 1;
            let Pick::One(b) = p5.pick(&five, &msg) else {
                panic!()
            };
            if four[a].id != five[b].id {
                moved += 1;
                assert_eq!(b, 4, "a key only moves to the new instance");
            }
        }
        let moved_share = moved as f64 / keys as f64;
        assert!((0.15..=0.25).contains(&moved_share), "moved {moved_share}");
        for c in per_instance {
            assert!((4_000..=6_000).contains(&c), "{per_instance:?}");
        }
    }

    #[test]
    fn broadcast_picks_all_and_empty_picks_nobody() {
        let instances = fakes(3);
        let policy = Policy::build(PolicyKind::Broadcast, &instances);
        assert_eq!(policy.pick(&instances, &Message::default()), Pick::All);
        let none: Vec<Fake> = Vec::new();
        assert_eq!(policy.pick(&none, &Message::default()), Pick::Nobody);
    }

    #[test]
    fn policy_names_round_trip() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.as_str().parse::<PolicyKind>(), Ok(kind));
        }
        assert!("fastest"
            .parse::<PolicyKind>()
            .unwrap_err()
            .contains("round_robin"));
    }
}
