//! SVG charts for the experiments (plotters, SVG backend only: text is written as SVG
//! `<text>`, so no font files are needed). Two kinds, both [`WIDTH`] pixels wide so that
//! they read at 1,000 px:
//!
//! - [`bars`]: categorical settings (a backlog, a buffer size, an attempt) as grouped bars,
//!   one bar per series in each group, its value written above it. Categories are never
//!   joined by lines: nothing lies between "backlog 8" and "backlog 128".
//! - [`percentiles`]: latency distributions, one curve per configuration, percentile along x
//!   (p50, p90, p99, p99.9, max: a "nines" axis) and latency on a log axis, so that a stall
//!   of tens of milliseconds stands out from microseconds; a guide line can mark a
//!   threshold (the 40 ms delayed-ACK timer).
//!
//! Legends sit in a column to the right of the data, never over it. Titles are wrapped to
//! two lines when long, so a title can state the run's finding. A chart with no data points
//! (an empty run) is still drawn, axes and all, with a note saying why it is empty.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::TuneError;

/// Every chart's width in pixels.
pub const WIDTH: u32 = 1000;
/// Every chart's height in pixels.
const HEIGHT: u32 = 600;
/// The width of the legend column, to the right of the data.
const LEGEND_WIDTH: u32 = 250;

/// One series of a bar chart: a name for the legend and one value per category.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per category (same order as the labels); NaN for "not measured".
    pub values: Vec<f64>,
}

/// What a bar chart shows.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The caption: the finding, when the run shows one.
    pub title: &'a str,
    /// The x axis' description.
    pub x_desc: &'a str,
    /// The y axis' description, with its unit.
    pub y_desc: &'a str,
    /// One label per category.
    pub labels: &'a [String],
    /// Said in the middle of the chart when there is nothing to draw.
    pub empty_note: &'a str,
    /// Written where a bar is missing (a NaN value: "not noticed"); empty: nothing.
    pub missing: &'a str,
}

/// One latency distribution: a configuration's name and its percentiles.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Legend text (the same name in every panel gets the same colour).
    pub name: String,
    /// (quantile in 0..=1, value); quantile 1.0 is the maximum.
    pub points: Vec<(f64, f64)>,
}

/// One panel of a percentile chart.
#[derive(Debug, Clone)]
pub struct Panel {
    /// The panel's caption (e.g. "server TCP_NODELAY on").
    pub title: String,
    /// Its curves.
    pub curves: Vec<Curve>,
}

/// What a percentile chart shows.
#[derive(Debug, Clone)]
pub struct PercentileSpec<'a> {
    /// The caption: the finding, when the run shows one.
    pub title: &'a str,
    /// The y axis' description, with its unit.
    pub y_desc: &'a str,
    /// A horizontal guide line: its value and its label.
    pub guide: Option<(f64, &'a str)>,
    /// Said in the middle of a panel with nothing to draw.
    pub empty_note: &'a str,
}

/// The colours of successive series.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// The colour of series `k`.
fn colour(k: usize) -> RGBColor {
    COLOURS[k % COLOURS.len()]
}

/// Draws grouped bars into `dir/<file>`; returns the path.
pub fn bars(
    dir: &Path,
    file: &str,
    spec: &Spec<'_>,
    series: &[Series],
) -> Result<PathBuf, TuneError> {
    let path = dir.join(file);
    draw_bars(&path, spec, series).map_err(|message| TuneError::Chart {
        path: path.clone(),
        message,
    })?;
    Ok(path)
}

/// Draws a percentile chart into `dir/<file>`; returns the path.
pub fn percentiles(
    dir: &Path,
    file: &str,
    spec: &PercentileSpec<'_>,
    panels: &[Panel],
) -> Result<PathBuf, TuneError> {
    let path = dir.join(file);
    draw_percentiles(&path, spec, panels).map_err(|message| TuneError::Chart {
        path: path.clone(),
        message,
    })?;
    Ok(path)
}

/// Plotters' errors as text.
fn text_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A text style of `size` pixels, anchored at `h`/`v`.
fn style(size: u32, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(h, v))
}

/// Splits `text` into lines of at most about `max` characters, at spaces.
fn wrap(text: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > max {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Draws the title (wrapped at about 75 characters, a 22 px font) at the top of `root`;
/// returns the area below it.
fn titled<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    title: &str,
) -> Result<DrawingArea<SVGBackend<'a>, Shift>, String> {
    let lines = wrap(title, 75);
    let line_h = 28;
    let top = 12 + line_h * lines.len().max(1) as i32;
    for (i, l) in lines.iter().enumerate() {
        root.draw(&Text::new(
            l.clone(),
            (WIDTH as i32 / 2, 10 + line_h * i as i32),
            style(22, HPos::Center, VPos::Top),
        ))
        .map_err(text_err)?;
    }
    let (_, below) = root.split_vertically(top);
    Ok(below)
}

/// Draws the legend (a swatch and a name per entry, wrapped) into the column `area`.
fn legend(area: &DrawingArea<SVGBackend<'_>, Shift>, names: &[String]) -> Result<(), String> {
    let mut y = 40;
    for (k, name) in names.iter().enumerate() {
        let c = colour(k);
        area.draw(&Rectangle::new([(10, y), (26, y + 12)], c.filled()))
            .map_err(text_err)?;
        for (i, l) in wrap(name, 30).iter().enumerate() {
            area.draw(&Text::new(
                l.clone(),
                (32, y - 1 + 16 * i as i32),
                style(14, HPos::Left, VPos::Top),
            ))
            .map_err(text_err)?;
            if i > 0 {
                y += 16;
            }
        }
        y += 22;
    }
    Ok(())
}

/// The largest finite value, or `None` when there is none.
fn max_finite(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.filter(|v| v.is_finite()).reduce(f64::max)
}

/// The grouped bars themselves; plotters' errors become text.
fn draw_bars(path: &Path, spec: &Spec<'_>, series: &[Series]) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(text_err)?;
    let body = titled(&root, spec.title)?;
    let (plot_area, legend_area) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
    let n = spec.labels.len();
    let top = max_finite(series.iter().flat_map(|s| s.values.iter().copied()));
    let empty = n == 0 || series.is_empty() || top.is_none();
    let hi = match top {
        Some(t) if t > 0.0 => t * 1.18,
        _ => 1.0,
    };
    let groups = n.max(1) as f64;
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(10)
        .x_label_area_size(70)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..groups, 0.0..hi)
        .map_err(text_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v: &f64| short(*v))
        .x_desc(spec.x_desc)
        .y_desc(spec.y_desc)
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(text_err)?;
    if empty {
        note(&chart, &plot_area, groups / 2.0, hi / 2.0, spec.empty_note)?;
    } else {
        let m = series.len() as f64;
        let slot = 0.8 / m;
        for (k, s) in series.iter().enumerate() {
            let c = colour(k);
            for (i, v) in s.values.iter().enumerate().take(n) {
                let x0 = i as f64 + 0.1 + slot * k as f64;
                let x1 = x0 + slot * 0.88;
                if !v.is_finite() {
                    if !spec.missing.is_empty() {
                        let (px, py) = chart.backend_coord(&((x0 + x1) / 2.0, 0.0));
                        for (j, l) in wrap(spec.missing, 14).iter().enumerate() {
                            root.draw(&Text::new(
                                l.clone(),
                                (px, py - 8 - 15 * (1 - j.min(1)) as i32),
                                style(13, HPos::Center, VPos::Bottom).color(&colour(k)),
                            ))
                            .map_err(text_err)?;
                        }
                    }
                    continue;
                }
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x1, *v)],
                        c.filled(),
                    )))
                    .map_err(text_err)?;
                let (px, py) = chart.backend_coord(&((x0 + x1) / 2.0, *v));
                root.draw(&Text::new(
                    short(*v),
                    (px, py - 3),
                    style(12, HPos::Center, VPos::Bottom),
                ))
                .map_err(text_err)?;
            }
        }
    }
    // The category labels, under each group, wrapped to two lines at most.
    let per_group = ((WIDTH - LEGEND_WIDTH - 100) as f64 / groups) as usize;
    let max_chars = (per_group / 7).max(6);
    for (i, label) in spec.labels.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        for (j, l) in wrap(label, max_chars).iter().take(2).enumerate() {
            root.draw(&Text::new(
                l.clone(),
                (px, py + 6 + 15 * j as i32),
                style(13, HPos::Center, VPos::Top),
            ))
            .map_err(text_err)?;
        }
    }
    let names: Vec<String> = series.iter().map(|s| s.name.clone()).collect();
    legend(&legend_area, &names)?;
    root.present().map_err(text_err)?;
    Ok(())
}

/// A value as short text: integers plain, others with one decimal.
fn short(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Writes `text` (wrapped) centred at data point (x, y) of `chart`, for an empty chart.
/// (Chart coordinates map to the backend's absolute pixels; `area` draws relative to itself.)
fn note<X, Y>(
    chart: &ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    x: X::ValueType,
    y: Y::ValueType,
    text: &str,
) -> Result<(), String>
where
    X: Ranged,
    Y: Ranged,
{
    let (px, py) = chart.backend_coord(&(x, y));
    let (ox, oy) = area.get_base_pixel();
    let lines = wrap(&format!("no data points: {text}"), 50);
    for (i, l) in lines.iter().enumerate() {
        area.draw(&Text::new(
            l.clone(),
            (px - ox, py - oy + 20 * i as i32),
            style(16, HPos::Center, VPos::Center),
        ))
        .map_err(text_err)?;
    }
    Ok(())
}

/// Where quantile `q` sits on the "nines" axis: p50 at 0.3, p90 at 1, p99 at 2, p99.9 at 3;
/// the maximum (q = 1) at 3.6.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        3.6
    } else {
        (-(1.0 - q).log10()).min(3.4)
    }
}

/// A latency in microseconds as text: `850 µs`, `42 ms`, `1.5 s`.
pub fn micros(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1} s", v / 1e6)
    } else if v >= 1_000.0 {
        let ms = v / 1e3;
        if ms >= 10.0 {
            format!("{ms:.0} ms")
        } else {
            format!("{ms:.1} ms")
        }
    } else {
        format!("{v:.0} µs")
    }
}

/// The percentile panels; plotters' errors become text.
fn draw_percentiles(
    path: &Path,
    spec: &PercentileSpec<'_>,
    panels: &[Panel],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(text_err)?;
    let body = titled(&root, spec.title)?;
    let (plots, legend_area) = body.split_horizontally(WIDTH - LEGEND_WIDTH);
    let all = panels
        .iter()
        .flat_map(|p| &p.curves)
        .flat_map(|c| c.points.iter().map(|(_, v)| *v));
    let top = max_finite(all.clone());
    let low = all
        .filter(|v| v.is_finite() && *v > 0.0)
        .reduce(f64::min)
        .unwrap_or(1.0);
    let guide = spec.guide.map_or(0.0, |(g, _)| g);
    let hi = (top.unwrap_or(1.0).max(guide) * 2.0).max(10.0);
    let lo = (low / 2.0).max(1.0).min(hi / 10.0);
    // One colour per name, the same in every panel.
    let mut names: Vec<String> = Vec::new();
    for c in panels.iter().flat_map(|p| &p.curves) {
        if !names.contains(&c.name) {
            names.push(c.name.clone());
        }
    }
    let count = panels.len().max(1);
    let areas = plots.split_evenly((1, count));
    let empty_panel = Panel {
        title: String::new(),
        curves: Vec::new(),
    };
    for (i, area) in areas.iter().enumerate() {
        let panel = panels.get(i).unwrap_or(&empty_panel);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(50)
            .y_label_area_size(if i == 0 { 80 } else { 50 })
            .build_cartesian_2d(0.0..4.0f64, (lo..hi).log_scale())
            .map_err(text_err)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .x_labels(0)
            .x_desc("percentile")
            .y_label_formatter(&|v: &f64| micros(*v))
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13));
        if i == 0 {
            mesh.y_desc(spec.y_desc);
        }
        mesh.draw().map_err(text_err)?;
        for (q, name) in [
            (0.5, "p50"),
            (0.9, "p90"),
            (0.99, "p99"),
            (0.999, "p99.9"),
            (1.0, "max"),
        ] {
            let (px, py) = chart.backend_coord(&(nines(q), lo));
            root.draw(&Text::new(
                name,
                (px, py + 6),
                style(13, HPos::Center, VPos::Top),
            ))
            .map_err(text_err)?;
        }
        if let Some((g, label)) = spec.guide {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, g), (4.0, g)],
                    RGBColor(120, 120, 120).stroke_width(1),
                )))
                .map_err(text_err)?;
            let (px, py) = chart.backend_coord(&(0.1, g));
            root.draw(&Text::new(
                label.to_string(),
                (px, py - 3),
                style(12, HPos::Left, VPos::Bottom).color(&RGBColor(90, 90, 90)),
            ))
            .map_err(text_err)?;
        }
        let has_points = panel
            .curves
            .iter()
            .any(|c| c.points.iter().any(|(_, v)| v.is_finite()));
        if !has_points {
            note(&chart, area, 2.0, (lo * hi).sqrt(), spec.empty_note)?;
            continue;
        }
        for c in &panel.curves {
            let k = names.iter().position(|n| *n == c.name).unwrap_or(0);
            let col = colour(k);
            let pts: Vec<(f64, f64)> = c
                .points
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(q, v)| (nines(*q), v.max(lo)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
                .map_err(text_err)?;
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, col.filled())))
                .map_err(text_err)?;
        }
    }
    legend(&legend_area, &names)?;
    root.present().map_err(text_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test's charts.
    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("socklab-chart-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The `width` attribute of an SVG's root element.
    fn svg_width(svg: &str) -> u32 {
        let at = svg.find("width=\"").unwrap() + 7;
        svg[at..].split('"').next().unwrap().parse().unwrap()
    }

    #[test]
    fn bars_carry_title_axes_labels_values_and_legend_at_1000_px() {
        let d = dir("bars");
        let labels = vec!["backlog 1".to_owned(), "backlog 128".to_owned()];
        let series = [
            Series {
                name: "up while stopped".into(),
                values: vec![3.0, 256.0],
            },
            Series {
                name: "echoed in 2 s".into(),
                values: vec![2.0, 256.0],
            },
            Series {
                name: "not measured".into(),
                values: vec![f64::NAN, 1.0],
            },
        ];
        let spec = Spec {
            title: "backlog 1: 2 of 256 echoed in 2 s",
            x_desc: "listen backlog",
            y_desc: "connections (count)",
            labels: &labels,
            empty_note: "nothing ran",
            missing: "absent",
        };
        let path = bars(&d, "b.svg", &spec, &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert_eq!(svg_width(&svg), WIDTH);
        for text in [
            "backlog 1: 2 of 256",
            "listen backlog",
            "connections (count)",
            "backlog 128",
            "up while stopped",
            "echoed in 2 s",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // The value above its bar (plotters writes a text's content on a line of its own).
        assert!(svg.lines().any(|l| l.trim() == "256"), "no value label");
        // A missing value says so where its bar would be.
        assert!(
            svg.lines().any(|l| l.trim() == "absent"),
            "no missing label"
        );
        assert!(!svg.contains("no data points"));
        // Categories are bars, not a line through them: the only lines are the axes' (black,
        // 1 px); a series' line would be coloured, 2 px.
        assert!(
            !svg.contains("stroke-width=\"2\""),
            "bars must not be joined"
        );
        assert!(
            svg.matches("<rect").count() >= 4 + 2,
            "four bars and two swatches"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_empty_run_still_renders_with_a_note() {
        let d = dir("empty");
        let spec = Spec {
            title: "nothing",
            x_desc: "x",
            y_desc: "y",
            labels: &[],
            empty_note: "the run measured nothing",
            missing: "",
        };
        let svg = std::fs::read_to_string(bars(&d, "e.svg", &spec, &[]).unwrap()).unwrap();
        assert!(svg.contains("<svg") && svg.contains("no data points: the run measured nothing"));
        let pspec = PercentileSpec {
            title: "latency",
            y_desc: "round trip",
            guide: Some((40_000.0, "40 ms")),
            empty_note: "no request was answered",
        };
        let panels = [Panel {
            title: "p".into(),
            curves: vec![Curve {
                name: "c".into(),
                points: vec![],
            }],
        }];
        let svg =
            std::fs::read_to_string(percentiles(&d, "p.svg", &pspec, &panels).unwrap()).unwrap();
        assert!(svg.contains("no data points: no request was answered"));
        let svg = std::fs::read_to_string(percentiles(&d, "q.svg", &pspec, &[]).unwrap()).unwrap();
        assert!(svg.contains("no data points"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn percentile_panels_share_a_legend_and_a_log_axis() {
        let d = dir("pct");
        let curve = |name: &str, p99: f64| Curve {
            name: name.into(),
            points: vec![(0.5, 40.0), (0.9, 60.0), (0.99, p99), (1.0, p99 * 1.1)],
        };
        let panels = [
            Panel {
                title: "server nodelay on".into(),
                curves: vec![curve("client on, wwr, 32 B", 80.0)],
            },
            Panel {
                title: "server nodelay off".into(),
                curves: vec![curve("client on, wwr, 32 B", 42_000.0)],
            },
        ];
        let spec = PercentileSpec {
            title: "Nagle + delayed ACK: p99 42 ms with the server's nodelay off",
            y_desc: "round trip (log scale)",
            guide: Some((40_000.0, "40 ms: delayed-ACK timer")),
            empty_note: "none",
        };
        let svg =
            std::fs::read_to_string(percentiles(&d, "p.svg", &spec, &panels).unwrap()).unwrap();
        assert_eq!(svg_width(&svg), WIDTH);
        for text in [
            "p99 42 ms",
            "server nodelay on",
            "server nodelay off",
            "client on, wwr, 32 B",
            "p99.9",
            "40 ms: delayed-ACK timer",
            "log scale",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // One legend entry, not one per panel.
        let entries = svg
            .lines()
            .filter(|l| l.trim() == "client on, wwr, 32 B")
            .count();
        assert_eq!(entries, 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn long_titles_wrap_and_latencies_read_in_their_unit() {
        assert_eq!(wrap("a b c", 3), vec!["a b", "c"]);
        assert_eq!(micros(850.0), "850 µs");
        assert_eq!(micros(42_000.0), "42 ms");
        assert_eq!(micros(1_500.0), "1.5 ms");
    }
}
