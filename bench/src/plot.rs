//! `plot`: the SVG plots of BENCHMARKS.md, drawn from the JSON lines the scenarios printed.
//!
//! - `rss.svg`: server RSS per connection against the number of connections, one series for single nodes
//!   (`conns` lines) and one for clusters (`cluster` lines, RSS summed over the nodes), with the target line.
//! - `latency.svg`: command latency (p50/p90/p99) and commands/s against concurrent REST callers (`commands`
//!   lines).
//!
//! Where several lines measure the same point (same N, same callers), the last one in the input wins, so a file
//! can be appended to run after run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::Value;

/// The RSS target of the benchmark issue (KiB per idle device socket).
const RSS_TARGET_KIB: f64 = 6.0;

/// p50, p90, p99 (ms) and commands/s of one `commands` run.
pub type CommandPoint = (f64, f64, f64, f64);

/// What the plots are drawn from.
#[derive(Debug, Default, PartialEq)]
pub struct Points {
    /// connections → KiB per connection, one node.
    pub single: BTreeMap<u64, f64>,
    /// database kind → connections → KiB per connection, all nodes of a cluster together.
    pub cluster: BTreeMap<String, BTreeMap<u64, f64>>,
    /// callers → (p50, p90, p99 ms, commands/s).
    pub commands: BTreeMap<u64, CommandPoint>,
}

impl Points {
    /// Reads every scenario JSON line of `text`; anything else (tables, notes) is skipped.
    pub fn add_text(&mut self, text: &str) {
        for line in text.lines().map(str::trim).filter(|l| l.starts_with('{')) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let n = v["registered"].as_u64();
            let per_conn = v["rss_kib_per_conn"].as_f64();
            match v["scenario"].as_str() {
                Some("conns") => {
                    if let (Some(n), Some(kib)) = (n, per_conn) {
                        self.single.insert(n, kib);
                    }
                }
                Some("cluster") => {
                    if let (Some(n), Some(kib)) = (n, per_conn) {
                        let database = v["database"].as_str().unwrap_or("unknown").to_owned();
                        self.cluster.entry(database).or_default().insert(n, kib);
                    }
                }
                Some("commands") => {
                    let l = &v["latency_ms"];
                    if let (Some(c), Some(p50), Some(p90), Some(p99), Some(rate)) = (
                        v["callers"].as_u64(),
                        l["p50"].as_f64(),
                        l["p90"].as_f64(),
                        l["p99"].as_f64(),
                        v["commands_per_sec"].as_f64(),
                    ) {
                        self.commands.insert(c, (p50, p90, p99, rate));
                    }
                }
                _ => {}
            }
        }
    }
}

pub fn run(inputs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, String> {
    let mut points = Points::default();
    for input in inputs {
        let text = std::fs::read_to_string(input)
            .map_err(|e| format!("cannot read {}: {e}", input.display()))?;
        points.add_text(&text);
    }
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut written = Vec::new();
    if !points.single.is_empty() || !points.cluster.is_empty() {
        let path = out.join("rss.svg");
        draw_rss(&points, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    if !points.commands.is_empty() {
        let path = out.join("latency.svg");
        draw_latency(&points, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    if written.is_empty() {
        return Err("no conns, cluster or commands JSON line in the input".into());
    }
    Ok(written)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn draw_rss(points: &Points, path: &Path) -> Result<(), String> {
    let all: Vec<(f64, f64)> = points
        .single
        .iter()
        .chain(points.cluster.values().flatten())
        .map(|(&n, &kib)| (n as f64, kib))
        .collect();
    let x_min = all.iter().map(|p| p.0).fold(f64::MAX, f64::min) / 1.5;
    let x_max = all.iter().map(|p| p.0).fold(0.0, f64::max) * 1.5;
    let y_max = all
        .iter()
        .map(|p| p.1)
        .fold(RSS_TARGET_KIB, f64::max)
        .mul_add(1.15, 1.0);

    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Server RSS per idle device socket (lean transport)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min.max(1.0)..x_max).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("connected terminals (log scale)")
        .y_desc("KiB per connection")
        .x_label_formatter(&|x| format!("{:.0}", x))
        .draw()
        .map_err(err)?;
    let palette = [RED, MAGENTA, GREEN, CYAN];
    let mut series: Vec<(String, &BTreeMap<u64, f64>, RGBColor)> =
        vec![("one node, SQLite (conns)".into(), &points.single, BLUE)];
    for (i, (database, data)) in points.cluster.iter().enumerate() {
        let label = match database.as_str() {
            "sqlite" => "cluster, one shared SQLite file (cluster)".to_owned(),
            "postgres" => "cluster, PostgreSQL (cluster)".to_owned(),
            other => format!("cluster, {other} (cluster)"),
        };
        series.push((label, data, palette[i % palette.len()]));
    }
    for (label, data, color) in series {
        if data.is_empty() {
            continue;
        }
        let xy: Vec<(f64, f64)> = data.iter().map(|(&n, &k)| (n as f64, k)).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(xy.iter().map(|&(x, y)| {
                Text::new(format!("{y:.1}"), (x, y + y_max * 0.03), ("sans-serif", 13))
            }))
            .map_err(err)?;
    }
    let target = [(x_min.max(1.0), RSS_TARGET_KIB), (x_max, RSS_TARGET_KIB)];
    chart
        .draw_series(LineSeries::new(target, BLACK.mix(0.5).stroke_width(1)))
        .map_err(err)?
        .label("target: 6 KiB")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

fn draw_latency(points: &Points, path: &Path) -> Result<(), String> {
    let callers: Vec<f64> = points.commands.keys().map(|&c| c as f64).collect();
    let x_min = callers.iter().copied().fold(f64::MAX, f64::min).max(1.0) / 1.4;
    let x_max = callers.iter().copied().fold(1.0, f64::max) * 1.4;
    let ms_max = points.commands.values().map(|v| v.2).fold(1.0, f64::max) * 1.15;
    let rate_max = points.commands.values().map(|v| v.3).fold(1.0, f64::max) * 1.15;

    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(560);

    let mut latency = ChartBuilder::on(&left)
        .caption(
            "Command latency (REST → terminal → REST)",
            ("sans-serif", 19),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..ms_max)
        .map_err(err)?;
    latency
        .configure_mesh()
        .x_desc("concurrent REST callers (log scale)")
        .y_desc("ms")
        .x_label_formatter(&|x| format!("{:.0}", x))
        .draw()
        .map_err(err)?;
    let quantiles = [("p50", GREEN), ("p90", BLUE), ("p99", RED)];
    for (index, (label, color)) in quantiles.into_iter().enumerate() {
        let pick = |v: &CommandPoint| [v.0, v.1, v.2][index];
        let xy: Vec<(f64, f64)> = points
            .commands
            .iter()
            .map(|(&c, v)| (c as f64, pick(v)))
            .collect();
        latency
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        latency
            .draw_series(xy.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let mut rate = ChartBuilder::on(&right)
        .caption("Commands answered per second", ("sans-serif", 19))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..rate_max)
        .map_err(err)?;
    rate.configure_mesh()
        .x_desc("concurrent REST callers (log scale)")
        .y_desc("commands/s")
        .x_label_formatter(&|x| format!("{:.0}", x))
        .draw()
        .map_err(err)?;
    let xy: Vec<(f64, f64)> = points
        .commands
        .iter()
        .map(|(&c, v)| (c as f64, v.3))
        .collect();
    rate.draw_series(LineSeries::new(xy.clone(), BLUE.stroke_width(2)))
        .map_err(err)?;
    rate.draw_series(xy.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = r#"
== conns: 1000 idle terminals ==
{"scenario":"conns","registered":1000,"rss_kib_per_conn":20.5,"errors":{}}
{"scenario":"conns","registered":1000,"rss_kib_per_conn":19.0,"errors":{}}
{"scenario":"cluster","registered":100000,"rss_kib_per_conn":7.5,"errors":{}}
{"scenario":"commands","callers":8,"commands_per_sec":900.0,"latency_ms":{"p50":5.0,"p90":8.0,"p99":12.5},"errors":{}}
{"scenario":"commands","callers":16,"commands_per_sec":1000.0,"latency_ms":{"p50":null},"errors":{}}
{"scenario":"ingest","registered":20}
not json {
"#;

    #[test]
    fn points_come_from_scenario_lines_and_the_last_wins() {
        let mut points = Points::default();
        points.add_text(LINES);
        assert_eq!(points.single, BTreeMap::from([(1000, 19.0)]));
        assert_eq!(
            points.cluster,
            BTreeMap::from([("unknown".to_owned(), BTreeMap::from([(100000, 7.5)]))])
        );
        // The callers=16 line has no latency figures: skipped, not plotted as zero.
        assert_eq!(
            points.commands,
            BTreeMap::from([(8, (5.0, 8.0, 12.5, 900.0))])
        );
    }

    #[test]
    fn svgs_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("results.jsonl");
        std::fs::write(&input, LINES).expect("write");
        let written = run(&[input], &dir.path().join("plots")).expect("plot");
        assert_eq!(written.len(), 2);
        let rss = std::fs::read_to_string(&written[0]).expect("rss.svg");
        assert!(rss.starts_with("<svg"), "{}", &rss[..rss.len().min(80)]);
        assert!(rss.contains("KiB per connection") && rss.contains("100000"));
        let latency = std::fs::read_to_string(&written[1]).expect("latency.svg");
        assert!(latency.contains("p99") && latency.contains("commands/s"));
        let empty = dir.path().join("empty.jsonl");
        std::fs::write(&empty, "{\"scenario\":\"ingest\"}\n").expect("write");
        assert!(run(&[empty], dir.path()).is_err());
    }
}
