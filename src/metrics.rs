//! Counters and gauges in Prometheus text format. Hot-path counters live next to what they count (per-route stats);
//! this registry holds the labelled, less frequent ones (rejections by reason, token fetches, key refreshes).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// A registry of labelled counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<String, f64>>,
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut key = String::from(name);
    if !labels.is_empty() {
        key.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(key, "{k}=\"{v}\"");
        }
        key.push('}');
    }
    key
}

impl Metrics {
    /// Add one to counter `name` with `labels`.
    pub fn incr(&self, name: &str, labels: &[(&str, &str)]) {
        let key = series_key(name, labels);
        if let Ok(mut s) = self.series.lock() {
            *s.entry(key).or_insert(0.0) += 1.0;
        }
    }

    /// Set gauge `name` with `labels` to `value`.
    pub fn set(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        let key = series_key(name, labels);
        if let Ok(mut s) = self.series.lock() {
            s.insert(key, value);
        }
    }

    /// Current value of a series (0 when never set).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = series_key(name, labels);
        self.series
            .lock()
            .ok()
            .and_then(|s| s.get(&key).copied())
            .unwrap_or(0.0)
    }

    /// Render every series, one per line.
    pub fn render(&self, out: &mut String) {
        if let Ok(s) = self.series.lock() {
            for (k, v) in s.iter() {
                let _ = writeln!(out, "{k} {v}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_accumulate_per_label_set() {
        let m = Metrics::default();
        m.incr("x_total", &[("reason", "expired")]);
        m.incr("x_total", &[("reason", "expired")]);
        m.incr("x_total", &[("reason", "a\"b")]);
        assert_eq!(m.get("x_total", &[("reason", "expired")]), 2.0);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("x_total{reason=\"a\\\"b\"} 1"), "{out}");
    }
}
