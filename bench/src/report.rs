//! What a scenario prints: a human table, then one JSON line `{"scenario":…, …figures…, "errors":{…}}`.

use serde_json::Value;

use crate::server::ServerLog;
use crate::stats::ErrorCounts;

pub struct Report {
    pub scenario: &'static str,
    title: String,
    /// (JSON key, human label, value, unit), in print order.
    figures: Vec<(String, String, Value, String)>,
    pub errors: ErrorCounts,
    notes: Vec<String>,
    /// What the server logged during the run, and while shutting down.
    server_log: Option<(ServerLog, Option<ServerLog>)>,
}

impl Report {
    pub fn new(scenario: &'static str, title: impl Into<String>) -> Report {
        Report {
            scenario,
            title: title.into(),
            figures: Vec::new(),
            errors: ErrorCounts::default(),
            notes: Vec::new(),
            server_log: None,
        }
    }

    /// One figure: in the JSON line under `key`, in the table as `label  value unit`. An empty key keeps it
    /// out of the JSON line, an empty label out of the table.
    pub fn figure(&mut self, key: &str, label: &str, value: impl Into<Value>, unit: &str) {
        self.figures
            .push((key.into(), label.into(), value.into(), unit.into()));
    }

    /// A figure that may be unknown (no server pid): `null` in JSON, `n/a` in the table.
    pub fn maybe(&mut self, key: &str, label: &str, value: Option<f64>, unit: &str) {
        let value = value.map_or(Value::Null, |v| Value::from(crate::stats::round3(v)));
        self.figure(key, label, value, unit);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn set_server_log(&mut self, during: ServerLog, shutdown: Option<ServerLog>) {
        self.server_log = Some((during, shutdown));
    }

    pub fn print(&self) {
        println!();
        println!("== {} ==", self.title);
        let width = self
            .figures
            .iter()
            .map(|(_, label, _, _)| label.len())
            .max()
            .unwrap_or(0)
            .max(14);
        for (_, label, value, unit) in &self.figures {
            if label.is_empty() {
                continue;
            }
            let text = human(value);
            if unit.is_empty() || value.is_null() {
                println!("  {label:<width$}  {text}");
            } else {
                println!("  {label:<width$}  {text} {unit}");
            }
        }
        if let Some((during, shutdown)) = &self.server_log {
            let parts = [
                ("server log", Some(during)),
                ("server log, shutdown", shutdown.as_ref()),
            ];
            for (label, log) in parts {
                let Some(log) = log else { continue };
                println!(
                    "  {label:<width$}  {} warnings, {} errors, {} panics",
                    log.warnings, log.errors, log.panics
                );
                for line in &log.samples {
                    println!("  {:<width$}    {line}", "");
                }
            }
        }
        if self.errors.is_empty() {
            println!("  {:<width$}  none", "errors");
        } else {
            println!("  {:<width$}  {} in all", "errors", self.errors.total());
            for line in self.errors.lines() {
                println!("  {:<width$}    {line}", "");
            }
        }
        for note in &self.notes {
            println!("  note: {note}");
        }
        println!("{}", self.json_line());
    }

    /// The machine-readable line; keys in print order, `errors` last.
    pub fn json_line(&self) -> String {
        let mut parts = vec![format!("\"scenario\":{}", Value::from(self.scenario))];
        for (key, _, value, _) in &self.figures {
            if key.is_empty() {
                continue;
            }
            parts.push(format!("{}:{value}", Value::from(key.as_str())));
        }
        if let Some((during, shutdown)) = &self.server_log {
            parts.push(format!("\"server_log_warnings\":{}", during.warnings));
            parts.push(format!("\"server_log_errors\":{}", during.errors));
            parts.push(format!("\"server_panics\":{}", during.panics));
            if let Some(s) = shutdown {
                parts.push(format!("\"server_shutdown_log_errors\":{}", s.errors));
                parts.push(format!("\"server_shutdown_panics\":{}", s.panics));
            }
        }
        parts.push(format!("\"errors\":{}", self.errors.to_json()));
        format!("{{{}}}", parts.join(","))
    }
}

fn human(value: &Value) -> String {
    match value {
        Value::Null => "n/a".into(),
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else if x.abs() >= 10.0 {
                format!("{x:.1}")
            } else {
                format!("{x:.2}")
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_keeps_order_and_ends_with_errors() {
        let mut r = Report::new("conns", "conns");
        r.figure("devices", "devices", 10, "");
        r.maybe("rss_kib_0", "rss", None, "KiB");
        r.figure("rate", "rate", 12.5, "/s");
        r.figure("", "table only", "x", "");
        r.figure("json_only", "", 1, "");
        r.errors.add("http_409");
        assert_eq!(
            r.json_line(),
            r#"{"scenario":"conns","devices":10,"rss_kib_0":null,"rate":12.5,"json_only":1,"errors":{"http_409":1}}"#
        );
        let parsed: Value = serde_json::from_str(&r.json_line()).expect("valid JSON");
        assert_eq!(parsed["errors"]["http_409"], 1);
        assert_eq!(human(&Value::from(1234.56)), "1235");
        assert_eq!(human(&Value::from(1.234)), "1.23");
    }
}
