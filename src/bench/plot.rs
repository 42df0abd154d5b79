//! The plot `minisora bench steps` draws: prompt adherence against the time
//! a clip takes, one line per sampler, each point labelled with its step
//! count. Drawn by plotters into memory and written by minisora's own PNG
//! writer (no second image crate); labels use the DejaVu Sans compiled into
//! the binary (`assets/fonts/`), so the picture is the same on every
//! machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::steps::SweepPoint;
use crate::{Error, Result};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// Dark, distinct line colours (readable on white; plotters' palette
/// starts with a pale yellow).
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];
const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("cannot draw the plot: {e}"))
}

/// Registers the compiled-in font as plotters' `sans-serif`, once.
fn register_fonts() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| plot_error("the compiled-in font does not parse"));
    });
    result
}

/// Draws `points` (pass rate in percent against seconds per clip, log
/// scale) as a PNG at `path`, with `title` above.
pub fn draw_sweep(points: &[SweepPoint], title: &str, path: &Path) -> Result<()> {
    register_fonts()?;
    if points.is_empty() {
        return Err(plot_error("no points"));
    }
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (lo, hi) = points
            .iter()
            .map(|p| p.seconds_per_clip)
            .fold((f64::INFINITY, 0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
        // some margin either side, so labels stay inside
        let (lo, hi) = (lo / 1.5, hi * 1.5);
        // up to the next ten above the best point (at least 20, at most 100):
        // low pass rates stay readable, and the axis says where it ends
        let best = points
            .iter()
            .map(|p| 100.0 * p.adherence.pass_rate)
            .fold(0f64, f64::max);
        let top = ((best / 10.0).floor() * 10.0 + 10.0).clamp(20.0, 100.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds per clip (log scale)")
            .y_desc("prompts passing (%)")
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .x_label_formatter(&|s| format!("{s:.2}"))
            .y_label_formatter(&|p| format!("{p:.0}"))
            .x_labels(6)
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(plot_error)?;
        let mut samplers: Vec<&str> = points.iter().map(|p| p.sampler.as_str()).collect();
        samplers.dedup();
        for (i, name) in samplers.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let mut line: Vec<(f64, f64, usize)> = points
                .iter()
                .filter(|p| p.sampler == *name)
                .map(|p| (p.seconds_per_clip, 100.0 * p.adherence.pass_rate, p.steps))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    line.iter().map(|&(x, y, _)| (x, y)),
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&(x, y, steps)| {
                    EmptyElement::at((x, y))
                        + Circle::new((0, 0), 4, colour.filled())
                        + Text::new(
                            format!("{steps}"),
                            (6, -18),
                            ("sans-serif", 14).into_font().color(&colour),
                        )
                }))
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, rgb)
        .ok_or_else(|| plot_error("the drawing buffer has the wrong size"))?;
    crate::video::write_png(path, &image)
}
