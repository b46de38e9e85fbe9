//! SVG charts for the experiments (plotters, SVG backend only: text is written as SVG
//! `<text>`, so no font files are needed). Categories (one per configuration measured) run
//! along the x axis; each series is one line with points.

use std::path::{Path, PathBuf};

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
    let x_style = ("sans-serif", 13).into_font();
    if spec.log_y {
        let lo = (lo / 2.0).max(1.0);
        let hi = (hi * 2.0).max(lo * 10.0);
        let mut chart = builder
            .build_cartesian_2d(x, (lo..hi).log_scale())
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc(spec.x_desc)
            .y_desc(spec.y_desc)
            .x_labels(n)
            .x_label_formatter(&label_of)
            .x_label_style(x_style.clone())
            .y_label_formatter(&|v| format!("{v}"))
            .draw()
            .map_err(|x| e(&x))?;
        for (k, s) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<(SegmentValue<i32>, f64)> = s
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (SegmentValue::CenterOf(i as i32), v.max(lo)))
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
    } else {
        let hi = if hi <= 0.0 { 1.0 } else { hi * 1.1 };
        let mut chart = builder.build_cartesian_2d(x, 0.0..hi).map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc(spec.x_desc)
            .y_desc(spec.y_desc)
            .x_labels(n)
            .x_label_formatter(&label_of)
            .x_label_style(x_style.clone())
            .draw()
            .map_err(|x| e(&x))?;
        for (k, s) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<(SegmentValue<i32>, f64)> = s
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (SegmentValue::CenterOf(i as i32), *v))
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
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
