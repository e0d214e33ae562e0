//! The Nexmark benchmark's events as a source (`kind = "nexmark"`): people
//! selling items in auctions and bidding on them, the model Flink,
//! RisingWave, Arroyo and Feldera publish their stream-SQL figures on
//! (docs/pipelines.md, "Nexmark").
//!
//! One stream of JSON records, one per event, with the columns of all
//! three kinds (`event_type` 0 = person, 1 = auction, 2 = bid; the other
//! kinds' columns are absent). The proportions and id rules are the
//! standard generator's (Beam's `NexmarkGenerator`): of every 50 events, 1
//! person, 3 auctions and 46 bids; sellers and bidders drawn among the
//! latest 1 000 people with hot ones, auctions among the latest 100 with
//! hot ones; prices `round(10^(6u) × 100)` cents. Event `n` is a function of
//! `(seed, n)` alone (its own random stream), so any batching and any
//! replay give the same events; event time is `2026-01-01T00:00:00Z +
//! n / rate` seconds.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Source;
use crate::config::FieldConfig;
use crate::record::{Offsets, SourceRecord};

/// Event time of event 0: 2026-01-01T00:00:00Z, in microseconds.
pub const BASE_TIME_US: i64 = 1_767_225_600_000_000;
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const CATEGORIES: u64 = 5;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const ACTIVE_PEOPLE: u64 = 1000;
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// The columns of the event stream (what `fields` would declare).
pub fn fields() -> Vec<FieldConfig> {
    let field = |name: &str, ty: &str, nullable: bool| FieldConfig {
        name: name.to_string(),
        ty: ty.to_string(),
        nullable,
    };
    vec![
        field("event_type", "int32", false),
        field("date_time", "timestamp_us", false),
        // Person
        field("person_id", "int64", true),
        field("name", "utf8", true),
        field("email_address", "utf8", true),
        field("credit_card", "utf8", true),
        field("city", "utf8", true),
        field("state", "utf8", true),
        // Auction
        field("auction_id", "int64", true),
        field("item_name", "utf8", true),
        field("description", "utf8", true),
        field("initial_bid", "int64", true),
        field("reserve", "int64", true),
        field("expires", "timestamp_us", true),
        field("seller", "int64", true),
        field("category", "int64", true),
        // Bid
        field("auction", "int64", true),
        field("bidder", "int64", true),
        field("price", "int64", true),
        field("channel", "utf8", true),
        field("url", "utf8", true),
        field("extra", "utf8", true),
    ]
}

/// Lowercase letters, `len` of them.
fn letters(rng: &mut ChaCha8Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

fn price(rng: &mut ChaCha8Rng) -> u64 {
    (10f64.powf(rng.random::<f64>() * 6.0) * 100.0).round() as u64
}

/// The newest person (base 0) when event `n` is generated.
fn last_person(n: u64) -> u64 {
    // One person opens every epoch of 50 events (PERSON_PROPORTION = 1).
    n / TOTAL_PROPORTION * PERSON_PROPORTION
}

/// The newest auction (base 0) when event `n` is generated (`None` before
/// the first).
fn last_auction(n: u64) -> Option<u64> {
    let (epoch, offset) = (n / TOTAL_PROPORTION, n % TOTAL_PROPORTION);
    if offset < PERSON_PROPORTION {
        (epoch * AUCTION_PROPORTION).checked_sub(1)
    } else {
        Some(epoch * AUCTION_PROPORTION + (offset - PERSON_PROPORTION).min(AUCTION_PROPORTION - 1))
    }
}

/// One of the active people (base 0).
fn some_person(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let people = last_person(n) + 1;
    let active = people.min(ACTIVE_PEOPLE);
    people - active + rng.random_range(0..active)
}

/// Event `n` of the stream of `seed`, `rate` events per second of event
/// time, as one JSON object (no newline).
pub fn event(seed: u64, rate: u64, n: u64, out: &mut Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let time = BASE_TIME_US + (n as i64).saturating_mul(1_000_000) / rate.max(1) as i64;
    let offset = n % TOTAL_PROPORTION;
    // Writing into a Vec cannot fail.
    let _ = if offset < PERSON_PROPORTION {
        let name = format!(
            "{} {}",
            FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
            LAST_NAMES[rng.random_range(0..LAST_NAMES.len())]
        );
        let email = format!("{}@{}.com", letters(&mut rng, 7), letters(&mut rng, 5));
        let card = format!(
            "{:04} {:04} {:04} {:04}",
            rng.random_range(0..10_000),
            rng.random_range(0..10_000),
            rng.random_range(0..10_000),
            rng.random_range(0..10_000)
        );
        let city = CITIES[rng.random_range(0..CITIES.len())];
        let state = STATES[rng.random_range(0..STATES.len())];
        let extra_len = rng.random_range(0..32);
        write!(
            out,
            r#"{{"event_type":0,"date_time":{time},"person_id":{},"name":"{name}","email_address":"{email}","credit_card":"{card}","city":"{city}","state":"{state}","extra":"{}"}}"#,
            last_person(n) + FIRST_PERSON_ID,
            letters(&mut rng, extra_len),
        )
    } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
        let id = last_auction(n).unwrap_or(0) + FIRST_AUCTION_ID;
        let seller = if rng.random_range(0..HOT_SELLER_RATIO) > 0 {
            (last_person(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
        } else {
            some_person(&mut rng, n)
        } + FIRST_PERSON_ID;
        let initial = price(&mut rng);
        let reserve = initial + price(&mut rng);
        let expires = time + rng.random_range(10_000_000..30_000_000i64);
        let item = letters(&mut rng, 12);
        let description = letters(&mut rng, 40);
        let category = FIRST_CATEGORY_ID + rng.random_range(0..CATEGORIES);
        let extra_len = rng.random_range(0..64);
        write!(
            out,
            r#"{{"event_type":1,"date_time":{time},"auction_id":{id},"item_name":"{item}","description":"{description}","initial_bid":{initial},"reserve":{reserve},"expires":{expires},"seller":{seller},"category":{category},"extra":"{}"}}"#,
            letters(&mut rng, extra_len),
        )
    } else {
        let last = last_auction(n).unwrap_or(0);
        let auction = if rng.random_range(0..HOT_AUCTION_RATIO) > 0 {
            (last / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
        } else {
            let min = last.saturating_sub(IN_FLIGHT_AUCTIONS);
            min + rng.random_range(0..=last - min)
        } + FIRST_AUCTION_ID;
        let bidder = if rng.random_range(0..HOT_BIDDER_RATIO) > 0 {
            ((last_person(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1).min(last_person(n))
        } else {
            some_person(&mut rng, n)
        } + FIRST_PERSON_ID;
        let price = price(&mut rng);
        let channel = CHANNELS[rng.random_range(0..CHANNELS.len())];
        let url = format!(
            "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
            letters(&mut rng, 5),
            letters(&mut rng, 5),
            letters(&mut rng, 5)
        );
        let extra_len = rng.random_range(0..16);
        write!(
            out,
            r#"{{"event_type":2,"date_time":{time},"auction":{auction},"bidder":{bidder},"price":{price},"channel":"{channel}","url":"{url}","extra":"{}"}}"#,
            letters(&mut rng, extra_len),
        )
    };
}

/// Events `[first, end)` as records of partition 0, offset = event number.
pub struct NexmarkSource {
    seed: u64,
    rate: u64,
    next: u64,
    end: u64,
    topic: Arc<str>,
}

impl NexmarkSource {
    pub fn new(seed: u64, rate: u64, events: u64) -> Self {
        NexmarkSource {
            seed,
            rate,
            next: 0,
            end: events,
            topic: Arc::from("nexmark"),
        }
    }
}

#[async_trait]
impl Source for NexmarkSource {
    async fn next_batch(
        &mut self,
        max: usize,
        _linger: Duration,
    ) -> anyhow::Result<Option<Vec<SourceRecord>>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let count = (self.end - self.next).min(max.max(1) as u64);
        let mut batch = Vec::with_capacity(count as usize);
        for n in self.next..self.next + count {
            let mut payload = Vec::with_capacity(160);
            event(self.seed, self.rate, n, &mut payload);
            batch.push(SourceRecord {
                key: None,
                payload: Some(payload),
                topic: self.topic.clone(),
                partition: 0,
                offset: n as i64,
                timestamp: None,
                headers: Vec::new(),
            });
        }
        self.next += count;
        Ok(Some(batch))
    }

    async fn commit(&mut self, _offsets: &Offsets) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: u64) -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| {
                let mut out = Vec::new();
                event(7, 1000, i, &mut out);
                serde_json::from_slice(&out).unwrap()
            })
            .collect()
    }

    #[test]
    fn proportions_ids_and_times_follow_the_model() {
        let all = events(5000);
        let kind = |t: i64| all.iter().filter(|e| e["event_type"] == t).count();
        assert_eq!((kind(0), kind(1), kind(2)), (100, 300, 4600));
        // People and auctions are numbered in order from 1000.
        let people: Vec<i64> = all.iter().filter_map(|e| e["person_id"].as_i64()).collect();
        assert_eq!(people, (1000..1100).collect::<Vec<_>>());
        let auctions: Vec<i64> = all
            .iter()
            .filter_map(|e| e["auction_id"].as_i64())
            .collect();
        assert_eq!(auctions, (1000..1300).collect::<Vec<_>>());
        // Bids name auctions and people that exist already.
        for (i, e) in all.iter().enumerate() {
            if e["event_type"] == 2 {
                let auction = e["auction"].as_i64().unwrap();
                assert!(
                    auction >= 1000 && auction < 1000 + 3 * (i as i64 / 50 + 1),
                    "{e}"
                );
                let bidder = e["bidder"].as_i64().unwrap();
                assert!(bidder >= 1000 && bidder < 1000 + (i as i64 / 50 + 1), "{e}");
            }
            assert_eq!(
                e["date_time"].as_i64().unwrap(),
                BASE_TIME_US + i as i64 * 1000,
                "{e}"
            );
        }
    }

    #[test]
    fn an_event_depends_on_the_seed_and_its_number_only() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        event(7, 1000, 4321, &mut a);
        event(7, 1000, 4321, &mut b);
        assert_eq!(a, b);
        b.clear();
        event(8, 1000, 4321, &mut b);
        assert_ne!(a, b);
    }
}
