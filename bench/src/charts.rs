//! SVG line charts of the comparison's figures (drawn with `plotters`), for BENCHMARKS.md.

use std::path::Path;

use plotters::prelude::*;

/// One line: its legend, colour and points (x = subscribers).
pub struct Series {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

pub const CPOD: RGBColor = RGBColor(0x1f, 0x6f, 0xeb);
pub const CPOD_LIGHT: RGBColor = RGBColor(0x79, 0xb0, 0xff);
pub const NCHAN: RGBColor = RGBColor(0xd9, 0x48, 0x1c);
pub const NCHAN_LIGHT: RGBColor = RGBColor(0xf2, 0xa0, 0x7b);

/// A chart with a logarithmic subscriber axis and a linear value axis from 0.
pub fn subscribers_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter().copied());
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(x), hi.max(x))
    });
    let y_max = points().map(|(_, y)| y).fold(0.0, f64::max) * 1.15;
    if !(x_min.is_finite() && x_max.is_finite() && y_max > 0.0) {
        anyhow::bail!("nothing to draw in {}", path.display());
    }
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d((x_min * 0.8..x_max * 1.25).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("subscribers")
        .y_desc(y_label)
        // Labels at 1, 2 and 5 × 10ⁿ only, and no minor lines: the log axis is readable.
        .x_label_formatter(&|x| {
            let leading = x / 10f64.powf(x.log10().floor());
            if [1.0, 2.0, 5.0].iter().any(|d| (leading - d).abs() < 1e-6) {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .light_line_style(WHITE)
        .y_label_formatter(&|y| {
            if *y >= 10_000.0 {
                format!("{:.0}k", y / 1000.0)
            } else {
                format!("{y:.0}")
            }
        })
        .draw()?;
    for line in series {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(line.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            line.points
                .iter()
                .map(|&point| Circle::new(point, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    root.present()?;
    Ok(())
}
