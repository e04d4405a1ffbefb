//! SVG plots of the soak, over its minutes: the host's RSS, its open file
//! descriptors, its mappings, and the echo probe's p99 per window against
//! the load suite's bound. Written with `plotters`' SVG backend alone, so
//! that no font or system library is needed (text is left to the viewer's
//! fonts).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::LATENCY_BOUND;
use super::sample::Sample;

/// One line of a plot: its legend, its points (minutes, value), its
/// colour.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
    colour: RGBColor,
}

/// Writes every plot into `out`; returns their paths.
pub fn write_all(out: &Path, samples: &[Sample]) -> Result<Vec<PathBuf>> {
    let minutes = |sample: &Sample| sample.at.as_secs_f64() / 60.0;
    let series = |value: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples
            .iter()
            .map(|sample| (minutes(sample), value(sample)))
            .collect()
    };
    let line = |name: &str, points, colour| Line {
        name: name.into(),
        points,
        colour,
    };
    let bound = LATENCY_BOUND.as_secs_f64() * 1e3;
    let plots = [
        (
            "rss.svg",
            "Host resident memory",
            "MiB",
            vec![line(
                "RSS",
                series(|s| s.resources.rss_kib as f64 / 1024.0),
                BLUE,
            )],
        ),
        (
            "fds.svg",
            "Host open file descriptors",
            "count",
            vec![line(
                "file descriptors",
                series(|s| s.resources.fds as f64),
                BLUE,
            )],
        ),
        (
            "maps.svg",
            "Host memory mappings",
            "count",
            vec![line("mappings", series(|s| s.resources.maps as f64), BLUE)],
        ),
        (
            "echo-p99.svg",
            "Echo round trip p99 per 10 s window",
            "ms",
            vec![
                line("p99", series(|s| s.echo.p99.as_secs_f64() * 1e3), BLUE),
                line(
                    "bound",
                    samples.iter().map(|s| (minutes(s), bound)).collect(),
                    RED,
                ),
            ],
        ),
    ];
    let mut written = Vec::new();
    for (file, title, unit, lines) in plots {
        let path = out.join(file);
        chart(&path, title, unit, &lines)?;
        written.push(path);
    }
    Ok(written)
}

fn chart(path: &Path, title: &str, unit: &str, lines: &[Line]) -> Result<()> {
    let plotting = |error| anyhow!("plotting {}: {error:?}", path.display());
    let points = || lines.iter().flat_map(|line| line.points.iter());
    let x_max = points().map(|(x, _)| *x).fold(0.1, f64::max);
    let y_max = points().map(|(_, y)| *y).fold(1e-3, f64::max) * 1.15;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plotting(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| plotting(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(unit)
        .draw()
        .map_err(|e| plotting(e.to_string()))?;
    for line in lines {
        let colour = line.colour;
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| plotting(e.to_string()))?
            .label(line.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plotting(e.to_string()))?;
    root.present().map_err(|e| plotting(e.to_string()))?;
    Ok(())
}
