//! Counting: every failure by kind (never dropped), latencies in an HDR histogram.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Failures by kind (`reg_connect`, `http_409`, `timeout`, `misrouted`, …), with the first message seen of
/// each kind so a human can tell what went wrong.
#[derive(Clone, Debug, Default)]
pub struct ErrorCounts {
    counts: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
}

impl ErrorCounts {
    #[cfg(test)]
    pub fn add(&mut self, kind: impl Into<String>) {
        self.add_n(kind, 1);
    }

    pub fn add_n(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.counts.entry(kind.into()).or_default() += n;
        }
    }

    /// Counts `n` failures of one kind and keeps `message` if it is the first of its kind (nothing when `n` is 0).
    pub fn add_n_with(&mut self, kind: impl Into<String>, n: u64, message: impl Into<String>) {
        if n == 0 {
            return;
        }
        let kind = kind.into();
        self.samples
            .entry(kind.clone())
            .or_insert_with(|| message.into());
        self.add_n(kind, n);
    }

    /// Counts one failure and keeps `message` if it is the first of its kind.
    pub fn add_with(&mut self, kind: impl Into<String>, message: impl Into<String>) {
        self.add_n_with(kind, 1, message);
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for (kind, n) in &other.counts {
            self.add_n(kind.clone(), *n);
        }
        for (kind, message) in &other.samples {
            self.samples
                .entry(kind.clone())
                .or_insert_with(|| message.clone());
        }
    }

    /// The same counts with `prefix.` before every kind (the smoke summary names the scenario).
    pub fn prefixed(&self, prefix: &str) -> ErrorCounts {
        fn rename<V: Clone>(m: &BTreeMap<String, V>, prefix: &str) -> BTreeMap<String, V> {
            m.iter()
                .map(|(k, v)| (format!("{prefix}.{k}"), v.clone()))
                .collect()
        }
        ErrorCounts {
            counts: rename(&self.counts, prefix),
            samples: rename(&self.samples, prefix),
        }
    }

    #[cfg(test)]
    pub fn get(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.counts
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v)))
                .collect::<Map<_, _>>(),
        )
    }

    /// Counts and first messages, for a worker process to hand its errors to the parent ([`Self::from_wire`]).
    pub fn to_wire(&self) -> Value {
        json!({"counts": self.counts, "samples": self.samples})
    }

    /// The inverse of [`Self::to_wire`]; a malformed value is itself counted as an error.
    pub fn from_wire(value: &Value) -> ErrorCounts {
        #[derive(serde::Deserialize)]
        struct Wire {
            counts: BTreeMap<String, u64>,
            samples: BTreeMap<String, String>,
        }
        match serde_json::from_value::<Wire>(value.clone()) {
            Ok(w) => ErrorCounts {
                counts: w.counts,
                samples: w.samples,
            },
            Err(e) => {
                let mut errors = ErrorCounts::default();
                errors.add_with("worker_bad_errors", e.to_string());
                errors
            }
        }
    }

    /// `kind: count (first message)` lines for the human table.
    pub fn lines(&self) -> Vec<String> {
        self.counts
            .iter()
            .map(|(kind, n)| match self.samples.get(kind) {
                Some(message) => format!("{kind}: {n} (first: {message})"),
                None => format!("{kind}: {n}"),
            })
            .collect()
    }
}

/// Latency histogram in microseconds, 1 µs to 1 hour, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

const MAX_MICROS: u64 = 3_600_000_000;

impl Latency {
    pub fn new() -> Result<Self, String> {
        Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .map(Latency)
            .map_err(|e| format!("cannot create histogram: {e}"))
    }

    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn merge(&mut self, other: &Latency) -> Result<(), String> {
        self.0
            .add(&other.0)
            .map_err(|e| format!("cannot merge histograms: {e}"))
    }

    fn ms(micros: u64) -> f64 {
        micros as f64 / 1000.0
    }

    /// `{"count","p50","p90","p99","max","mean"}` in milliseconds (null figures when empty).
    pub fn to_json(&self) -> Value {
        if self.0.is_empty() {
            return json!({"count": 0, "p50": null, "p90": null, "p99": null, "max": null, "mean": null});
        }
        let q = |q: f64| round3(Self::ms(self.0.value_at_quantile(q)));
        json!({
            "count": self.0.len(),
            "p50": q(0.50),
            "p90": q(0.90),
            "p99": q(0.99),
            "max": round3(Self::ms(self.0.max())),
            "mean": round3(self.0.mean() / 1000.0),
        })
    }

    /// `[[µs, count], …]`: every recorded value, for a worker process to hand to its parent.
    pub fn to_wire(&self) -> Value {
        Value::Array(
            self.0
                .iter_recorded()
                .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
                .collect(),
        )
    }

    /// Adds what [`Self::to_wire`] wrote; returns how many pairs could not be read.
    pub fn add_wire(&mut self, value: &Value) -> usize {
        let mut bad = 0;
        for pair in value.as_array().map(Vec::as_slice).unwrap_or_default() {
            match (
                pair.get(0).and_then(Value::as_u64),
                pair.get(1).and_then(Value::as_u64),
            ) {
                (Some(micros), Some(n)) => {
                    let _ = self.0.record_n(micros.clamp(1, MAX_MICROS), n);
                }
                _ => bad += 1,
            }
        }
        bad
    }

    /// `p50 1.2 / p90 3.4 / p99 5.6 / max 7.8 ms` for the human table.
    pub fn summary(&self) -> String {
        if self.0.is_empty() {
            return "no samples".into();
        }
        let q = |q: f64| Self::ms(self.0.value_at_quantile(q));
        format!(
            "p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms ({} samples)",
            q(0.5),
            q(0.9),
            q(0.99),
            Self::ms(self.0.max()),
            self.0.len()
        )
    }
}

/// Rounds to 3 decimals for the JSON line.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_merge_and_keep_first_message() {
        let mut a = ErrorCounts::default();
        a.add_with("http_409", "first");
        a.add_with("http_409", "second");
        let mut b = ErrorCounts::default();
        b.add_n("timeout", 3);
        b.add_n("nothing", 0);
        a.merge(&b);
        assert_eq!(a.total(), 5);
        assert_eq!(a.get("http_409"), 2);
        assert_eq!(a.to_json(), json!({"http_409": 2, "timeout": 3}));
        assert_eq!(a.lines()[0], "http_409: 2 (first: first)");
        assert_eq!(a.prefixed("storm").get("storm.timeout"), 3);
        a.add_n_with("dropped", 0, "none");
        a.add_n_with("dropped", 4, "4 lost");
        assert_eq!(a.get("dropped"), 4);
        assert!(a.lines().contains(&"dropped: 4 (first: 4 lost)".to_owned()));
    }

    #[test]
    fn worker_wire_formats_round_trip() {
        let mut errors = ErrorCounts::default();
        errors.add_with("reg_connect", "refused");
        errors.add_n("reg_timeout", 4);
        let back = ErrorCounts::from_wire(&errors.to_wire());
        assert_eq!(back.lines(), errors.lines());
        assert_eq!(
            ErrorCounts::from_wire(&json!(7)).get("worker_bad_errors"),
            1
        );

        let mut l = Latency::new().expect("histogram");
        for ms in [1, 1, 5, 250] {
            l.record(Duration::from_millis(ms));
        }
        let mut merged = Latency::new().expect("histogram");
        assert_eq!(merged.add_wire(&l.to_wire()), 0);
        assert_eq!(merged.to_json(), l.to_json());
        assert_eq!(merged.add_wire(&json!([[1, 2], ["x"]])), 1);
    }

    #[test]
    fn latency_percentiles_in_ms() {
        let mut l = Latency::new().expect("histogram");
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let mut other = Latency::new().expect("histogram");
        other.record(Duration::from_secs(2));
        l.merge(&other).expect("merge");
        let j = l.to_json();
        assert_eq!(j["count"], 101);
        assert!((j["p50"].as_f64().expect("p50") - 51.0).abs() < 0.1, "{j}");
        assert!(
            (j["max"].as_f64().expect("max") - 2000.0).abs() < 2.0,
            "{j}"
        );
        assert_eq!(Latency::new().expect("h").to_json()["p99"], Value::Null);
    }
}
