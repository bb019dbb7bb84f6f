//! A hand-written SVG of horizontal bar charts (no plotting dependency):
//! one panel per figure (requests/s at 50 and at 1,000 connections,
//! WebSocket messages/s), one bar per target, its median written at the
//! bar's end.

use std::fmt::Write as _;

use super::load::Scenario;
use super::plan::Results;
use super::report::{medians, thousands};
use super::targets::Kind;

const WIDTH: f64 = 760.0;
const LABEL_RIGHT: f64 = 170.0;
const BAR_LEFT: f64 = 180.0;
const BAR_MAX: f64 = 470.0;
const ROW: f64 = 24.0;
const BAR: f64 = 16.0;

/// One panel: a title and (label, value, colour) bars.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub bars: Vec<(String, f64, &'static str)>,
}

fn colour(kind: Kind) -> &'static str {
    match kind {
        Kind::Balancer => "#2f6fb3",
        Kind::Nginx { .. } => "#4f9a48",
        Kind::Haproxy { .. } => "#c9772b",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The panels for a run's results (scenarios not run are left out).
pub fn panels(r: &Results) -> Vec<Panel> {
    let titles = [
        (
            Scenario::Http50,
            "HTTP requests/s, 50 keep-alive connections",
        ),
        (
            Scenario::Http1000,
            "HTTP requests/s, 1,000 keep-alive connections",
        ),
        (Scenario::WsEcho, "WebSocket echo messages/s, 100 sockets"),
    ];
    titles
        .iter()
        .filter(|(s, _)| r.scenarios.contains(s))
        .map(|(s, title)| Panel {
            title: (*title).to_string(),
            bars: r
                .targets
                .iter()
                .filter_map(|t| {
                    let m = medians(t, *s)?;
                    Some((t.kind.label(), m.rate, colour(t.kind)))
                })
                .collect(),
        })
        .collect()
}

/// The SVG document; the `caption` lines go under the panels.
pub fn render(panels: &[Panel], caption: &[String]) -> String {
    let mut body = String::new();
    let mut y = 10.0;
    for p in panels {
        let _ = writeln!(
            body,
            r#"  <text x="10" y="{:.0}" font-weight="bold">{}</text>"#,
            y + 14.0,
            escape(&p.title)
        );
        y += 24.0;
        let max = p
            .bars
            .iter()
            .map(|b| b.1)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        for (label, value, fill) in &p.bars {
            let w = if max > 0.0 && value.is_finite() {
                (value / max * BAR_MAX).max(1.0)
            } else {
                0.0
            };
            let _ = writeln!(
                body,
                r#"  <text x="{LABEL_RIGHT}" y="{:.0}" text-anchor="end">{}</text>"#,
                y + 12.5,
                escape(label)
            );
            let _ = writeln!(
                body,
                r#"  <rect x="{BAR_LEFT}" y="{y:.0}" width="{w:.1}" height="{BAR}" fill="{fill}"/>"#
            );
            let _ = writeln!(
                body,
                r#"  <text x="{:.1}" y="{:.0}">{}</text>"#,
                BAR_LEFT + w + 6.0,
                y + 12.5,
                thousands(*value)
            );
            y += ROW;
        }
        y += 12.0;
    }
    for line in caption {
        let _ = writeln!(
            body,
            r##"  <text x="10" y="{:.0}" font-size="11" fill="#555">{}</text>"##,
            y + 8.0,
            escape(line)
        );
        y += 15.0;
    }
    let height = y + 5.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n  \
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_scaled_to_the_largest() {
        let p = Panel {
            title: "a & b".to_string(),
            bars: vec![
                ("x".to_string(), 100.0, "#000"),
                ("y <z>".to_string(), 50.0, "#111"),
                ("none".to_string(), f64::NAN, "#222"),
            ],
        };
        let svg = render(&[p], &["caption".to_string()]);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(r#"width="470.0""#));
        assert!(svg.contains(r#"width="235.0""#));
        assert!(svg.contains("a &amp; b"));
        assert!(svg.contains("y &lt;z&gt;"));
        assert_eq!(svg.matches("<rect").count(), 4);
    }
}
