//! Presenting a run: a table for people, a JSON file with every figure, and an SVG chart of
//! throughput and ack latency over time.

use crate::{Percentiles, Report};
use std::fmt::Write;

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn row(out: &mut String, name: &str, p: &Percentiles) {
    if p.count > 0 {
        let _ = writeln!(out, "  {name:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", p.count, ms(p.p50), ms(p.p90), ms(p.p99), ms(p.p999), ms(p.max));
    }
}

pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "scenario {}: {} connections, {:.1} s, target {} events/s", r.scenario, r.connections, r.seconds, if r.target_rate > 0.0 { format!("{:.0}", r.target_rate) } else { "max".into() });
    let _ = writeln!(o, "  sent {}  acked {}  duplicates {}  pushes {}  unlocks {}", r.sent, r.acked, r.duplicates, r.pushes, r.unlocks);
    let _ = writeln!(o, "  throughput {:.0} events/s acked, {:.0} pushes/s", r.events_per_sec, r.pushes_per_sec);
    let _ = writeln!(o, "  latency (ms)           {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", "count", "p50", "p90", "p99", "p99.9", "max");
    row(&mut o, "connect + auth", &r.connect);
    row(&mut o, "event -> ack", &r.ack);
    row(&mut o, "event -> xp push", &r.xp);
    row(&mut o, "event -> unlock push", &r.unlock);
    if let Some(p) = &r.fresh_first_ack {
        row(&mut o, "fresh user, 1st ack", p);
    }
    if let Some(p) = &r.revived_first_ack {
        row(&mut o, "revived user, 1st ack", p);
    }
    if let Some(ms) = r.resume_all_ms {
        let _ = writeln!(o, "  reconnect storm: {} of {} clients resumed, the last within {} ms; not recovered: {}", r.resumed.unwrap_or(0), r.connections, ms, r.not_recovered);
    }
    if let (Some(b), Some(s)) = (r.baseline_ack_p99_us, r.slow_phase_ack_p99_us) {
        let _ = writeln!(o, "  slow consumers: others' ack p99 {} ms before, {} ms with 1% not reading ({:+.0}%); slow clients closed: {}", self::ms(b), self::ms(s), (s as f64 / b.max(1) as f64 - 1.0) * 100.0, r.slow_closed.unwrap_or(0));
    }
    if r.distinct_users > 0 {
        let _ = writeln!(o, "  distinct users: {}", r.distinct_users);
    }
    let _ = writeln!(o, "  missed pushes: {}", r.missed_pushes);
    if r.errors.is_empty() {
        let _ = writeln!(o, "  errors: none");
    } else {
        let _ = writeln!(o, "  errors: {:?}", r.errors);
    }
    if let Some(s) = &r.server {
        let _ = writeln!(
            o,
            "  server: {:.0}% CPU (of one core) on average, RSS {} MiB before, {} MiB connected, {} MiB peak; {:.1} KiB per connection",
            s.cpu_percent_avg,
            s.rss_before_kib / 1024,
            s.rss_connected_kib / 1024,
            s.rss_peak_kib / 1024,
            s.bytes_per_connection as f64 / 1024.0
        );
    }
    o
}

/// Two panels: acked events per second, and ack latency p50/p99 (ms) per second.
pub fn svg(r: &Report) -> String {
    let (w, h, pad) = (800.0, 260.0, 50.0);
    let pts = &r.timeline;
    let n = pts.len().max(2) as f64;
    let x = |i: usize| pad + i as f64 * (w - 2.0 * pad) / (n - 1.0);
    let max_rate = pts.iter().map(|p| p.acked.max(p.sent)).max().unwrap_or(1).max(1) as f64;
    let max_lat = pts.iter().map(|p| p.ack_p99_us).max().unwrap_or(1).max(1) as f64 / 1000.0;
    let line = |vals: Vec<f64>, top: f64, max: f64, color: &str| {
        let d: Vec<String> = vals.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), top + h - 20.0 - v / max * (h - 40.0))).collect();
        format!(r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, d.join(" "))
    };
    let mut s = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#, 2.0 * h + 40.0);
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/><text x="{pad}" y="16">{} — {} connections</text>"#, r.scenario, r.connections);
    for (k, top, title, max) in [(0, 20.0, format!("events/s (max {max_rate:.0}): sent grey, acked blue"), max_rate), (1, h + 40.0, format!("ack latency ms (max {max_lat:.1}): p50 green, p99 red"), max_lat)] {
        let _ = write!(s, r#"<rect x="{pad}" y="{top}" width="{}" height="{}" fill="none" stroke="grey"/><text x="{}" y="{}">{title}</text>"#, w - 2.0 * pad, h - 20.0, pad + 5.0, top + 15.0);
        if k == 0 {
            s.push_str(&line(pts.iter().map(|p| p.sent as f64).collect(), top, max, "#999"));
            s.push_str(&line(pts.iter().map(|p| p.acked as f64).collect(), top, max, "#1f6feb"));
        } else {
            s.push_str(&line(pts.iter().map(|p| p.ack_p50_us as f64 / 1000.0).collect(), top, max, "#2da44e"));
            s.push_str(&line(pts.iter().map(|p| p.ack_p99_us as f64 / 1000.0).collect(), top, max, "#cf222e"));
        }
    }
    let _ = write!(s, r#"<text x="{pad}" y="{}">seconds 0 … {}</text></svg>"#, 2.0 * h + 35.0, pts.len().saturating_sub(1));
    s
}
