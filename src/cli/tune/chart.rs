//! SVG charts for the experiments (plotters, SVG backend only: text is written as SVG
//! `<text>`, so no font files are needed). Categories (one per configuration measured) run
//! along the x axis; each series is one line with points.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{SegmentedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordi32;
use plotters::prelude::*;

use super::TuneError;

/// One line of a chart: a name for the legend and one value per category.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per category (same order as the labels).
    pub values: Vec<f64>,
}

/// What a chart shows.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The caption.
    pub title: &'a str,
    /// The x axis' description.
    pub x_desc: &'a str,
    /// The y axis' description, with its unit.
    pub y_desc: &'a str,
    /// One label per category.
    pub labels: &'a [String],
    /// Whether the y axis is logarithmic (latencies spanning orders of magnitude).
    pub log_y: bool,
}

/// The colours of successive series.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `series` over the categories of `spec` into `dir/<file>`; returns the path.
pub fn lines(
    dir: &Path,
    file: &str,
    spec: &Spec<'_>,
    series: &[Series],
) -> Result<PathBuf, TuneError> {
    let path = dir.join(file);
    draw(&path, spec, series).map_err(|message| TuneError::Chart {
        path: path.clone(),
        message,
    })?;
    Ok(path)
}

/// The drawing itself; plotters' errors become text.
fn draw(path: &Path, spec: &Spec<'_>, series: &[Series]) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let n = spec.labels.len().max(1);
    let longest = spec
        .labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4);
    // Labels stay horizontal (plotters centres rotated labels on their tick, across the
    // plot), so each category gets the width of the longest one.
    let per_category = (7 * longest as u32 + 20).max(60);
    let width = (160 + per_category * n as u32).clamp(700, 2600);
    let label_area = 60;
    let root = SVGBackend::new(path, (width, 520 + label_area)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let values = series.iter().flat_map(|s| s.values.iter().copied());
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(spec.title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(label_area)
        .y_label_area_size(90);
    // A discrete range's segments include its end: 0..n-1 gives n of them.
    let x = (0..(n as i32 - 1).max(0)).into_segmented();
    let labels = spec.labels;
    let label_of = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| labels.get(i))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    };
    if spec.log_y {
        let lo = (lo / 2.0).max(1.0);
        let hi = (hi * 2.0).max(lo * 10.0);
        let chart = builder
            .build_cartesian_2d(x, (lo..hi).log_scale())
            .map_err(|x| e(&x))?;
        plot(
            chart,
            spec,
            series,
            lo,
            Some(&|v: &f64| format!("{v}")),
            &label_of,
        )?;
    } else {
        let hi = if hi <= 0.0 { 1.0 } else { hi * 1.1 };
        let chart = builder.build_cartesian_2d(x, 0.0..hi).map_err(|x| e(&x))?;
        plot(chart, spec, series, f64::MIN, None, &label_of)?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Draws the mesh, one line with points per series (values below `floor` drawn at it: a log
/// axis has no zero), and the legend, on a chart with categories along x.
fn plot<'a, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<SegmentedCoord<RangedCoordi32>, Y>>,
    spec: &Spec<'_>,
    series: &[Series],
    floor: f64,
    y_format: Option<&dyn Fn(&f64) -> String>,
    label_of: &dyn Fn(&SegmentValue<i32>) -> String,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(spec.x_desc)
        .y_desc(spec.y_desc)
        .x_labels(spec.labels.len().max(1))
        .x_label_formatter(label_of)
        .x_label_style(("sans-serif", 13).into_font());
    if let Some(f) = y_format {
        mesh.y_label_formatter(f);
    }
    mesh.draw().map_err(|x| e(&x))?;
    for (k, s) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let points: Vec<(SegmentValue<i32>, f64)> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (SegmentValue::CenterOf(i as i32), v.max(floor)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.filled())),
            )
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_and_linear_charts_carry_their_axes_labels_and_legend() {
        let dir = std::env::temp_dir().join(format!("socklab-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let labels = vec!["64 B".to_owned(), "1 KiB".to_owned(), "64 KiB".to_owned()];
        let series = [
            Series {
                name: "nodelay on".into(),
                values: vec![40.0, 55.0, 900.0],
            },
            Series {
                name: "nodelay off".into(),
                values: vec![40_000.0, 41_000.0, 0.0],
            },
        ];
        for log_y in [true, false] {
            let spec = Spec {
                title: "latency",
                x_desc: "payload",
                y_desc: "p99 (µs)",
                labels: &labels,
                log_y,
            };
            let path = lines(&dir, &format!("c-{log_y}.svg"), &spec, &series).unwrap();
            let svg = std::fs::read_to_string(&path).unwrap();
            for text in [
                "latency",
                "payload",
                "p99 (µs)",
                "64 KiB",
                "nodelay on",
                "nodelay off",
            ] {
                assert!(svg.contains(text), "{text} in the {log_y} chart");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
