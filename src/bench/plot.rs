//! PNG plots of benchmark runs (plotters, bitmap backend): series over time and latency
//! distributions. Text is drawn with a TrueType font from the system (DejaVu Sans or
//! Liberation Sans, Debian's `fonts-dejavu-core` / `fonts-liberation`), registered once.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = FONTS
                .iter()
                .find(|p| Path::new(p).exists())
                .ok_or("no TrueType font found (apt-get install fonts-dejavu-core)")?;
            let bytes: &'static [u8] = Box::leak(
                std::fs::read(path)
                    .map_err(|e| e.to_string())?
                    .into_boxed_slice(),
            );
            register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable font"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Lines over x: `series` are (name, points).
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    font()?;
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x1, mut y1) = (1e-9f64, 1e-9f64);
    for (x, y) in points {
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    let root = BitMapBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x1 * 1.02, 0f64..y1 * 1.1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Latency distributions as cumulative curves (x: latency, y: share of events at or below
/// it), one per series.
pub fn cdf(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, values)| {
            let mut sorted = values.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let n = sorted.len().max(1) as f64;
            let points = sorted
                .iter()
                .enumerate()
                .map(|(i, v)| (*v, 100.0 * (i + 1) as f64 / n))
                .collect();
            (name.clone(), points)
        })
        .collect();
    lines(
        path,
        title,
        "latency (s)",
        "% of events at or below",
        &curves,
    )
}
