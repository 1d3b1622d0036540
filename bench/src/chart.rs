//! The chart of a run: one panel per rate, latency percentiles (p50, p90, p99) per target as
//! grouped bars on a logarithmic scale, written as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::load::Rate;
use crate::report::Report;

const PERCENTILES: [(&str, RGBColor); 3] =
    [("p50", RGBColor(66, 133, 244)), ("p90", RGBColor(251, 188, 5)), ("p99", RGBColor(219, 68, 55))];

fn values(report: &Report, rate: Rate) -> Vec<(&str, [f64; 3])> {
    report
        .targets
        .iter()
        .filter_map(|t| {
            let p = t.phases.iter().find(|p| p.rate == rate)?;
            Some((t.name.as_str(), [p.load.p50_ms, p.load.p90_ms, p.load.p99_ms]))
        })
        .collect()
}

pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let rates = &report.settings.rates;
    let all: Vec<f64> = rates.iter().flat_map(|r| values(report, *r)).flat_map(|(_, v)| v).filter(|v| v.is_finite() && *v > 0.0).collect();
    let low = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.001) / 2.0;
    let high = all.iter().copied().fold(0.0, f64::max).max(low * 10.0) * 2.0;
    let width = 420 * rates.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 460)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| format!("chart: {e}");
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let (title, body) = root.split_vertically(40);
    let heading = format!("Latency by target ({} cores, one fake upstream), ms, log scale", report.machine.cores);
    title.draw(&Text::new(heading, (12, 12), ("sans-serif", 18).into_font())).map_err(|e| draw(&e))?;
    for (k, (label, color)) in PERCENTILES.iter().enumerate() {
        let x = width as i32 - 240 + 70 * k as i32;
        title.draw(&Rectangle::new([(x, 14), (x + 12, 26)], color.filled())).map_err(|e| draw(&e))?;
        title.draw(&Text::new(*label, (x + 16, 12), ("sans-serif", 15).into_font())).map_err(|e| draw(&e))?;
    }
    for (panel, rate) in body.split_evenly((1, rates.len().max(1))).iter().zip(rates) {
        let data = values(report, *rate);
        let groups = data.len().max(1) as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(rate.label(), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(8)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..groups, (low..high).log_scale())
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("ms")
            .y_label_formatter(&|v| if *v >= 1.0 { format!("{v:.0}") } else { format!("{v}") })
            .draw()
            .map_err(|e| draw(&e))?;
        for (j, (_, color)) in PERCENTILES.iter().enumerate() {
            let bars = data.iter().enumerate().filter(|(_, (_, v))| v[j].is_finite()).map(|(i, (_, v))| {
                let x = i as f64 + 0.12 + j as f64 * 0.26;
                Rectangle::new([(x, low), (x + 0.24, v[j].max(low))], color.filled())
            });
            chart.draw_series(bars).map_err(|e| draw(&e))?;
        }
        let names = data
            .iter()
            .enumerate()
            .map(|(i, (name, _))| Text::new(name.to_string(), (i as f64 + 0.2, high / 1.6), ("sans-serif", 14).into_font().color(&BLACK)));
        chart.draw_series(names).map_err(|e| draw(&e))?;
    }
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chart_is_an_svg_with_every_target() {
        let report = crate::report::tests::sample();
        let path = std::env::temp_dir().join(format!("stockpulse-bench-chart-{}.svg", std::process::id()));
        super::write_svg(&report, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for name in ["direct", "floor", "stockpulse", "litellm", "portkey", "2000/s", "saturation"] {
            assert!(svg.contains(name), "{name} missing from the chart");
        }
    }
}
