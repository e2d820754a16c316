//! Small SVG charts for `attune report`: a line chart, horizontal bars, a
//! heat map and a reliability diagram. Plain strings, no dependencies.

use std::fmt::Write;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 44.0;
const TOP: f64 = 16.0;
const RIGHT: f64 = 16.0;

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn frame(width: f64, height: f64, body: &str, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" \
         role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" font-size=\"11\">{body}</svg>",
        escape(title)
    )
}

/// Axes with y from 0 to 1 in tenths and the given x tick labels.
fn unit_axes(out: &mut String, x_ticks: &[(f64, String)], x_title: &str, y_title: &str) {
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    for tenth in 0..=10 {
        let y = TOP + plot_h * (1.0 - tenth as f64 / 10.0);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1}</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            tenth as f64 / 10.0
        );
    }
    for (x, label) in x_ticks {
        let px = LEFT + plot_w * x;
        let _ = write!(
            out,
            "<text x=\"{px}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h + 16.0,
            escape(label)
        );
    }
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#333\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h,
        TOP + plot_h,
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0,
        escape(x_title),
        TOP + plot_h / 2.0,
        escape(y_title)
    );
}

/// A named, coloured line through (x, y) points, both in [0, 1].
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// One or more series over shared x positions.
pub fn line_chart(title: &str, x_ticks: &[(f64, String)], series: &[Series<'_>], x_title: &str) -> String {
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let mut out = String::new();
    unit_axes(&mut out, x_ticks, x_title, "on held-out examples");
    for (index, Series { name, colour, points }) in series.iter().enumerate() {
        let path: Vec<String> =
            points.iter().map(|(x, y)| format!("{:.1},{:.1}", LEFT + plot_w * x, TOP + plot_h * (1.0 - y))).collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in points {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{name}: {y:.3}</title></circle>",
                LEFT + plot_w * x,
                TOP + plot_h * (1.0 - y)
            );
        }
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            LEFT + 10.0,
            TOP + 14.0 + 14.0 * index as f64,
            escape(name)
        );
    }
    frame(WIDTH, HEIGHT, &out, title)
}

/// Horizontal bars, one per label.
pub fn bars(title: &str, rows: &[(String, f64)], unit: &str) -> String {
    let row_h = 18.0;
    let label_w = 170.0;
    let height = TOP + row_h * rows.len() as f64 + 8.0;
    let most = rows.iter().map(|r| r.1).fold(0.0, f64::max).max(1e-9);
    let mut out = String::new();
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = TOP + row_h * i as f64;
        let w = (WIDTH - label_w - 60.0) * value / most;
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{label_w}\" y=\"{}\" width=\"{w:.1}\" height=\"{}\" fill=\"#4c78a8\"/>\
             <text x=\"{}\" y=\"{}\">{value} {unit}</text>",
            label_w - 6.0,
            y + 12.0,
            escape(label),
            y + 2.0,
            row_h - 4.0,
            label_w + w + 4.0,
            y + 12.0
        );
    }
    frame(WIDTH, height, &out, title)
}

/// Counts of (true row, predicted column), shaded by the share of the row.
pub fn confusion(title: &str, labels: &[String], counts: &[Vec<u64>]) -> String {
    let n = labels.len() as f64;
    let label_w = 150.0;
    let cell = ((WIDTH - label_w) / n).clamp(6.0, 40.0);
    let size = label_w + cell * n;
    let show_text = cell >= 18.0;
    let mut out = String::new();
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum::<u64>().max(1);
        let y = TOP + cell * i as f64;
        if show_text || labels.len() <= 40 {
            let _ = write!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"{}\">{}</text>",
                label_w - 4.0,
                y + cell * 0.7,
                (cell * 0.7).min(11.0),
                escape(&labels[i])
            );
        }
        for (j, count) in row.iter().enumerate() {
            let share = *count as f64 / total as f64;
            let colour = if i == j { (40, 120, 60) } else { (200, 60, 50) };
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{cell:.1}\" height=\"{cell:.1}\" fill=\"rgb({},{},{})\" \
                 fill-opacity=\"{:.3}\" stroke=\"#eee\"><title>{} → {}: {count}</title></rect>",
                label_w + cell * j as f64,
                colour.0,
                colour.1,
                colour.2,
                share.max(0.02),
                escape(&labels[i]),
                escape(&labels[j])
            );
            if show_text && *count > 0 {
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{count}</text>",
                    label_w + cell * (j as f64 + 0.5),
                    y + cell * 0.65
                );
            }
        }
    }
    frame(size + RIGHT, TOP + cell * n + 8.0, &out, title)
}

/// Mean confidence against accuracy per confidence bin; the diagonal is
/// perfect calibration. `bins` holds (mean confidence, accuracy, count).
pub fn reliability(title: &str, bins: &[(f64, f64, u64)]) -> String {
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let ticks: Vec<(f64, String)> = (0..=5).map(|i| (i as f64 / 5.0, format!("{:.1}", i as f64 / 5.0))).collect();
    let mut out = String::new();
    unit_axes(&mut out, &ticks, "predicted probability (confidence)", "observed accuracy");
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{TOP}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>",
        TOP + plot_h,
        LEFT + plot_w
    );
    let most = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64;
    for (confidence, accuracy, count) in bins.iter().filter(|b| b.2 > 0) {
        let radius = 3.0 + 7.0 * (*count as f64 / most).sqrt();
        let _ = write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{radius:.1}\" fill=\"#f58518\" fill-opacity=\"0.75\">\
             <title>confidence {confidence:.2}, accuracy {accuracy:.2}, {count} examples</title></circle>",
            LEFT + plot_w * confidence,
            TOP + plot_h * (1.0 - accuracy)
        );
    }
    frame(WIDTH, HEIGHT, &out, title)
}
