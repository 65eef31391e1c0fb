//! Two hand-written SVG charts: speedups as bars (log scale) and latency
//! percentile curves. Plain strings; nothing to install to view them.

use hdrhistogram::Histogram;

use crate::results::Comparison;

const FONT: &str = "font-family=\"Helvetica, Arial, sans-serif\"";
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars of `baseline / arrowpool` on a log axis; 1x is the line
/// where neither wins. Bars left of it are rows where Parquet is faster.
pub fn speedups(rows: &[Comparison], title: &str) -> String {
    let (label_w, plot_w, row_h, top) = (300.0, 460.0, 26.0, 50.0);
    let width = label_w + plot_w + 90.0;
    let height = top + row_h * rows.len().max(1) as f64 + 50.0;
    let logs: Vec<f64> = rows
        .iter()
        .filter(|c| c.speedup > 0.0)
        .map(|c| c.speedup.log10())
        .collect();
    let lo = logs.iter().copied().fold(0.0f64, f64::min).floor();
    let hi = logs.iter().copied().fold(1.0f64, f64::max).ceil();
    let x = |v: f64| label_w + (v - lo) / (hi - lo) * plot_w;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" {FONT} font-size=\"16\" font-weight=\"bold\">{}</text>\n",
        10,
        esc(title)
    );
    let bottom = top + row_h * rows.len() as f64;
    let mut p = lo as i32;
    while p <= hi as i32 {
        let gx = x(p as f64);
        s += &format!(
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{bottom}\" stroke=\"{}\" stroke-width=\"1\"/>\n\
             <text x=\"{gx:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\" text-anchor=\"middle\">{}x</text>\n",
            if p == 0 { "#333" } else { "#ddd" },
            bottom + 16.0,
            format_power(p)
        );
        p += 1;
    }
    for (i, c) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let v = if c.speedup > 0.0 {
            c.speedup.log10()
        } else {
            lo
        };
        let (x0, x1) = if v >= 0.0 {
            (x(0.0), x(v))
        } else {
            (x(v), x(0.0))
        };
        let color = if v >= 0.0 { COLORS[0] } else { COLORS[1] };
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"12\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\">{}</text>\n",
            label_w - 8.0,
            y + row_h * 0.65,
            esc(&c.label),
            y + 4.0,
            (x1 - x0).max(1.0),
            row_h - 8.0,
            x(v.max(0.0)) + 4.0,
            y + row_h * 0.65,
            format_speedup(c.speedup)
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\" text-anchor=\"middle\">Parquet time / arrowpool time (log scale); red: Parquet faster</text>\n</svg>\n",
        label_w + plot_w / 2.0,
        bottom + 36.0
    );
    s
}

fn format_power(p: i32) -> String {
    if p >= 0 {
        format!("{}", 10u64.pow(p as u32))
    } else {
        format!("{}", 10f64.powi(p))
    }
}

/// `12.3x`, `1234x`, `0.45x`.
pub fn format_speedup(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}x")
    } else if v >= 10.0 {
        format!("{v:.1}x")
    } else {
        format!("{v:.2}x")
    }
}

/// Latency against percentile, both on log axes (the usual HdrHistogram plot):
/// x is 1/(1-p), so 90%, 99%, 99.9% are evenly spaced.
pub fn latency(series: &[(String, &Histogram<u64>)], title: &str) -> String {
    let (left, top, plot_w, plot_h) = (70.0, 50.0, 560.0, 320.0);
    let width = left + plot_w + 260.0;
    let height = top + plot_h + 60.0;
    let x_max = 4.0; // up to 99.99%
    let mut points: Vec<Vec<(f64, f64)>> = Vec::new();
    for (_, h) in series {
        let mut pts = Vec::new();
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let xv = if q >= 1.0 {
                x_max
            } else {
                (1.0 / (1.0 - q)).log10().min(x_max)
            };
            pts.push((xv, (v.value_iterated_to().max(1) as f64).log10()));
            if xv >= x_max {
                break;
            }
        }
        points.push(pts);
    }
    let ys = points.iter().flatten().map(|p| p.1);
    let y_lo = ys
        .clone()
        .fold(f64::INFINITY, f64::min)
        .min(6.0)
        .floor()
        .max(0.0);
    let y_hi = ys.fold(0.0f64, f64::max).ceil().max(y_lo + 1.0);
    let px = |v: f64| left + v / x_max * plot_w;
    let py = |v: f64| top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" {FONT} font-size=\"16\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    for (k, label) in ["0%", "90%", "99%", "99.9%", "99.99%"].iter().enumerate() {
        let gx = px(k as f64);
        s += &format!(
            "<line x1=\"{gx:.1}\" y1=\"{top}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{gx:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\" text-anchor=\"middle\">{label}</text>\n",
            top + plot_h,
            top + plot_h + 16.0
        );
    }
    let mut e = y_lo as i32;
    while e <= y_hi as i32 {
        let gy = py(e as f64);
        s += &format!(
            "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\" text-anchor=\"end\">{}</text>\n",
            left + plot_w,
            left - 6.0,
            gy + 4.0,
            crate::measure::human_s(10f64.powi(e) / 1e6)
        );
        e += 1;
    }
    for (i, ((name, _), pts)) in series.iter().zip(&points).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", px(a), py(b)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{color}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"12\">{}</text>\n",
            path.join(" "),
            left + plot_w + 16.0,
            top + 10.0 + 20.0 * i as f64,
            left + plot_w + 36.0,
            top + 16.0 + 20.0 * i as f64,
            esc(name)
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" {FONT} font-size=\"11\" text-anchor=\"middle\">percentile</text>\n</svg>\n",
        left + plot_w / 2.0,
        top + plot_h + 40.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed() {
        let rows = vec![
            Comparison {
                key: "a".into(),
                label: "read <all>".into(),
                baseline: "x".into(),
                baseline_s: 1.0,
                candidate: "y".into(),
                candidate_s: 0.001,
                speedup: 1000.0,
            },
            Comparison {
                key: "b".into(),
                label: "ingest".into(),
                baseline: "x".into(),
                baseline_s: 1.0,
                candidate: "y".into(),
                candidate_s: 2.0,
                speedup: 0.5,
            },
        ];
        let svg = speedups(&rows, "t");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("read &lt;all&gt;"));
        assert!(svg.contains("1000x") && svg.contains("0.50x"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let mut h = crate::measure::histogram();
        for v in 1..10_000 {
            h.record(v).unwrap();
        }
        let svg = latency(&[("s".into(), &h)], "t");
        assert!(svg.contains("<polyline") && !svg.contains("NaN"));
    }
}
