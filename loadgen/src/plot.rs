//! The `--plot` SVG: setup latency percentiles per second over the run, and the latency
//! distribution (percentile spectrum) of each route.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::{Report, RouteReport};

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Draws `report` into an SVG file at `path`.
pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    draw(report, path).map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(430);

    // Latency over time.
    let t = &report.timeline;
    let x_max = (t.len() as f64).max(1.0);
    let y_max = t.iter().map(|s| ms(s.max_us)).fold(0.0, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(&upper)
        .caption(
            "call setup latency per second (due -> answerer has Ok)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start (warm-up included)")
        .y_desc("ms")
        .draw()?;
    if report.warmup_s > 0.0 {
        let w = report.warmup_s;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (w, y_max)],
            RGBColor(230, 230, 230).filled(),
        )))?;
    }
    type Pick = fn(&crate::report::SecondReport) -> u64;
    let series: [(&str, RGBColor, Pick); 4] = [
        ("p50", BLUE, |s| s.p50_us),
        ("p90", GREEN, |s| s.p90_us),
        ("p99", RGBColor(230, 140, 0), |s| s.p99_us),
        ("max", RED, |s| s.max_us),
    ];
    for (name, color, pick) in series {
        chart
            .draw_series(LineSeries::new(
                t.iter()
                    .filter(|s| s.setups > 0)
                    .map(|s| (s.t_s as f64 + 0.5, ms(pick(s)))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    // Distribution: latency at each percentile, per route.
    let points = |r: &RouteReport| -> Vec<(f64, f64)> {
        if r.setups == 0 {
            return Vec::new();
        }
        // x in "nines": 0 = p50, 1 = p90, 2 = p99, 3 = p99.9; max drawn at 4.
        vec![
            (0.0, ms(r.p50_us)),
            (1.0, ms(r.p90_us)),
            (2.0, ms(r.p99_us)),
            (3.0, ms(r.p999_us)),
            (4.0, ms(r.max_us)),
        ]
    };
    let same = points(&report.same_node);
    let cross = points(&report.cross_node);
    let y2 = same
        .iter()
        .chain(cross.iter())
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let mut dist = ChartBuilder::on(&lower)
        .caption(
            "latency distribution (p50, p90, p99, p99.9, max)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.2f64..4.2, 0f64..y2)?;
    dist.configure_mesh()
        .x_desc("percentile")
        .y_desc("ms")
        .x_labels(5)
        .disable_x_mesh()
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() > 0.01 {
                return String::new();
            }
            match x.round() as i64 {
                0 => "p50".into(),
                1 => "p90".into(),
                2 => "p99".into(),
                3 => "p99.9".into(),
                4 => "max".into(),
                _ => String::new(),
            }
        })
        .draw()?;
    for (name, color, pts) in [("same node", BLUE, same), ("cross node", RED, cross)] {
        if pts.is_empty() {
            continue;
        }
        dist.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        dist.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    dist.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
