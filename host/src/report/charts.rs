//! Charts drawn with `plotters` and written twice, as PNG (for a quick look) and SVG
//! (for papers): line charts of one or more panels with labelled axes, round ticks, an
//! optional log-scale y axis, seed-spread bands and stage markers; and expert-load
//! heatmaps. Text is set in DejaVu Sans, embedded, so a chart looks the same on every
//! machine.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Series colours (the Tableau 10 hues): the same index is the same colour in every
/// chart of a report.
pub const PALETTE: [RGBColor; 8] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75), RGBColor(227, 119, 194), RGBColor(127, 127, 127)];

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: cannot draw the chart: {reason}")]
    Draw { path: PathBuf, reason: String },
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A line through the points.
    Line,
    /// A dot at each point (e.g. validation losses, measured now and then).
    Dots,
}

/// One named series of `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// Index into [`PALETTE`]: series of one domain (its train line and validation dots)
    /// or one arm share it.
    pub colour: usize,
    /// `(x, low, high)`: a shaded band behind the line (e.g. the seeds' spread).
    pub band: Vec<(f64, f64, f64)>,
}

impl Series {
    /// A line or dots without a band.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, mark: Mark, colour: usize) -> Self {
        Self { name: name.into(), points, mark, colour, band: Vec::new() }
    }
}

/// One plot area of a chart.
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
    /// Vertical dashed markers at `x`, labelled (e.g. stage starts).
    pub markers: Vec<(f64, String)>,
}

/// A line chart of one panel, or of several side by side (e.g. one per domain).
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub panels: Vec<Panel>,
    /// A logarithmic y axis (losses spanning orders of magnitude).
    pub log_y: bool,
}

/// Heatmaps stacked vertically, one per group (e.g. per MoE layer): `rows[r][c]` in
/// 0..=1 (white to dark blue), columns spanning `x_range`.
pub struct Heatmaps {
    pub title: String,
    pub x_label: String,
    /// What the colour means, shown under the title.
    pub scale: String,
    /// `(name, rows)`; row `r` is labelled `E{r}`.
    pub groups: Vec<(String, Vec<Vec<f64>>)>,
    pub x_range: (f64, f64),
}

const WIDTH: u32 = 1100;
const PANEL_HEIGHT: u32 = 440;
const TITLE_HEIGHT: u32 = 44;

/// The font family every chart uses, registered once.
fn font() -> &'static str {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // Both are the embedded DejaVu Sans; registering cannot fail on a valid font.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
    "sans-serif"
}

impl LineChart {
    /// Write `<stem>.png` and `<stem>.svg`; returns both paths.
    pub fn save(&self, stem: &Path) -> Result<[PathBuf; 2], ChartError> {
        let columns = if self.panels.len() > 1 { 2 } else { 1 };
        let rows = self.panels.len().div_ceil(columns).max(1) as u32;
        save_both(stem, (WIDTH, TITLE_HEIGHT + rows * PANEL_HEIGHT), self)
    }
}

/// Something drawn the same way on every plotters backend.
trait Drawing {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

impl Drawing for LineChart {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let columns = if self.panels.len() > 1 { 2 } else { 1 };
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (title, body) = root.split_vertically(TITLE_HEIGHT);
        title.titled(&self.title, (font(), 22).into_font().style(FontStyle::Bold)).map_err(|e| e.to_string())?;
        let rows = self.panels.len().div_ceil(columns).max(1);
        let areas = body.split_evenly((rows, columns));
        for (panel, area) in self.panels.iter().zip(&areas) {
            let (y0, y1) = y_range(panel, self.log_y);
            if self.log_y {
                draw_panel(area, panel, &self.x_label, &self.y_label, (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)))?;
            } else {
                draw_panel(area, panel, &self.x_label, &self.y_label, y0..y1)?;
            }
        }
        Ok(())
    }
}

/// The finite x range of a panel's points (a unit range when it has none).
fn x_range(panel: &Panel) -> (f64, f64) {
    let xs = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0).chain(s.band.iter().map(|b| b.0))).filter(|x| x.is_finite());
    let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// The y range of a panel's points and bands with a margin; on a log axis only positive
/// values count.
fn y_range(panel: &Panel, log: bool) -> (f64, f64) {
    let ys = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.1).chain(s.band.iter().flat_map(|b| [b.1, b.2]))).filter(|y| y.is_finite() && (!log || *y > 0.0));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    match (lo > hi, log) {
        (true, true) => (0.1, 10.0),
        (true, false) => (0.0, 1.0),
        (false, true) => (lo / 1.1, hi * 1.1),
        (false, false) => {
            let pad = if hi > lo { (hi - lo) * 0.05 } else { lo.abs().max(1.0) * 0.05 };
            (lo - pad, hi + pad)
        }
    }
}

fn draw_panel<DB: DrawingBackend, Y>(area: &DrawingArea<DB, Shift>, panel: &Panel, x_label: &str, y_label: &str, y: Y) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let (x0, x1) = x_range(panel);
    let mut chart = ChartBuilder::on(area).caption(&panel.title, (font(), 17)).margin(12).x_label_area_size(44).y_label_area_size(64).build_cartesian_2d(x0..x1, y).map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style((font(), 13))
        .axis_desc_style((font(), 15))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(8)
        .x_label_formatter(&|x| tick(*x))
        .y_labels(8)
        .y_label_formatter(&|y| tick(*y))
        .draw()
        .map_err(|e| err(&e))?;
    let (y0, y1) = {
        let range = chart.y_range();
        (range.start, range.end)
    };
    for s in &panel.series {
        let colour = PALETTE[s.colour % PALETTE.len()];
        if !s.band.is_empty() {
            let mut outline: Vec<(f64, f64)> = s.band.iter().map(|&(x, _, hi)| (x, hi)).collect();
            outline.extend(s.band.iter().rev().map(|&(x, lo, _)| (x, lo)));
            chart.draw_series(std::iter::once(Polygon::new(outline, colour.mix(0.18).filled()))).map_err(|e| err(&e))?;
        }
        let points: Vec<(f64, f64)> = s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        match s.mark {
            Mark::Line => {
                chart
                    .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(3)));
            }
            Mark::Dots => {
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 4, colour.filled())))
                    .map_err(|e| err(&e))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| Circle::new((x + 11, y), 4, colour.filled()));
            }
        }
    }
    for (x, label) in &panel.markers {
        chart.draw_series(DashedLineSeries::new(vec![(*x, y0), (*x, y1)], 6, 4, BLACK.mix(0.6).stroke_width(1))).map_err(|e| err(&e))?;
        chart.draw_series(std::iter::once(Text::new(format!(" {label}"), (*x, y1), (font(), 12)))).map_err(|e| err(&e))?;
    }
    if panel.series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((font(), 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

impl Heatmaps {
    /// Write `<stem>.png` and `<stem>.svg`; returns both paths.
    pub fn save(&self, stem: &Path) -> Result<[PathBuf; 2], ChartError> {
        let rows: u32 = self.groups.iter().map(|(_, g)| g.len() as u32).sum();
        let height = TITLE_HEIGHT + 24 + self.groups.len() as u32 * 110 + rows * 18;
        save_both(stem, (WIDTH, height), self)
    }
}

impl Drawing for Heatmaps {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (title, body) = root.split_vertically(TITLE_HEIGHT + 24);
        title.titled(&self.title, (font(), 22).into_font().style(FontStyle::Bold)).map_err(|e| err(&e))?;
        title.draw_text(&self.scale, &(font(), 14).into_text_style(&title), (12, TITLE_HEIGHT as i32)).map_err(|e| err(&e))?;
        let heights: Vec<u32> = self.groups.iter().map(|(_, g)| 110 + g.len() as u32 * 18).collect();
        let mut rest = body;
        let (x0, x1) = if self.x_range.1 > self.x_range.0 { self.x_range } else { (self.x_range.0, self.x_range.0 + 1.0) };
        for ((name, grid), h) in self.groups.iter().zip(heights) {
            let (area, below) = rest.split_vertically(h);
            rest = below;
            let experts = grid.len().max(1);
            let mut chart = ChartBuilder::on(&area)
                .caption(name, (font(), 15))
                .margin(8)
                .margin_right(28)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, -0.5..experts as f64 - 0.5)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(self.x_label.as_str())
                .label_style((font(), 12))
                .axis_desc_style((font(), 13))
                .y_labels(experts)
                .y_label_formatter(&|v| if (v.round() - v).abs() < 1e-6 && *v >= 0.0 { format!("E{}", v.round() as usize) } else { String::new() })
                .x_labels(8)
                .x_label_formatter(&|x| tick(*x))
                .draw()
                .map_err(|e| err(&e))?;
            for (e, row) in grid.iter().enumerate() {
                let n = row.len().max(1) as f64;
                let cells = row.iter().enumerate().map(|(i, &v)| {
                    let (a, b) = (x0 + (x1 - x0) * i as f64 / n, x0 + (x1 - x0) * (i + 1) as f64 / n);
                    Rectangle::new([(a, e as f64 - 0.5), (b, e as f64 + 0.5)], heat(v).filled())
                });
                chart.draw_series(cells).map_err(|e| err(&e))?;
            }
        }
        Ok(())
    }
}

/// Round ticks for a log axis over `lo..hi`: 1, 2 and 5 times powers of ten, or every
/// digit where that gives fewer than three.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let within = |mantissas: &[f64]| -> Vec<f64> {
        let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (first..=last).flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e))).filter(|v| *v >= lo && *v <= hi).collect()
    };
    let coarse = within(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 { coarse } else { within(&[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]) }
}

/// An axis tick: steps and token counts as whole numbers, large ones with k or M.
fn tick(x: f64) -> String {
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    let a = x.abs();
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", x / 1e6)))
    } else if a >= 1e4 {
        format!("{}k", trim(format!("{:.1}", x / 1e3)))
    } else if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        trim(format!("{x:.2}"))
    }
}

/// White at 0 to dark blue at 1.
fn heat(v: f64) -> RGBColor {
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let lerp = |a: f64, b: f64| (a + (b - a) * v).round() as u8;
    RGBColor(lerp(255.0, 8.0), lerp(255.0, 48.0), lerp(255.0, 107.0))
}

/// Draw once into an RGB buffer (encoded as PNG) and once as SVG, each written
/// atomically.
fn save_both(stem: &Path, size: (u32, u32), drawing: &impl Drawing) -> Result<[PathBuf; 2], ChartError> {
    let png_path = stem.with_extension("png");
    let svg_path = stem.with_extension("svg");
    let mut pixels = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        drawing.draw(&root).map_err(|reason| ChartError::Draw { path: png_path.clone(), reason })?;
        root.present().map_err(|e| ChartError::Draw { path: png_path.clone(), reason: e.to_string() })?;
    }
    let png = encode_png(&pixels, size).map_err(|reason| ChartError::Draw { path: png_path.clone(), reason })?;
    crate::atomic_file::write(&png_path, &png).map_err(|source| ChartError::Io { path: png_path.clone(), source })?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        drawing.draw(&root).map_err(|reason| ChartError::Draw { path: svg_path.clone(), reason })?;
        root.present().map_err(|e| ChartError::Draw { path: svg_path.clone(), reason: e.to_string() })?;
    }
    crate::atomic_file::write(&svg_path, svg.as_bytes()).map_err(|source| ChartError::Io { path: svg_path.clone(), source })?;
    Ok([png_path, svg_path])
}

fn encode_png(rgb: &[u8], (width, height): (u32, u32)) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{LineChart, Mark, Panel, Series};

    /// Both files are written, the SVG has the labels as text, and a log axis accepts
    /// the same data.
    #[test]
    fn a_chart_is_written_as_png_and_svg_with_its_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line: Vec<(f64, f64)> = (0..50).map(|i| (i as f64 * 10.0, 5.0 * (-(i as f64) / 20.0).exp() + 1.0)).collect();
        let mut train = Series::new("code train", line.clone(), Mark::Line, 0);
        train.band = line.iter().map(|&(x, y)| (x, y - 0.2, y + 0.2)).collect();
        let dots = Series::new("code valid", line.iter().step_by(10).copied().collect(), Mark::Dots, 0);
        for log_y in [false, true] {
            let chart = LineChart {
                title: "Loss per domain".into(),
                x_label: "step".into(),
                y_label: "loss (nats/token)".into(),
                panels: vec![Panel {
                    title: "code".into(),
                    series: vec![Series { band: train.band.clone(), ..Series::new("code train", line.clone(), Mark::Line, 0) }, Series::new(dots.name.clone(), dots.points.clone(), Mark::Dots, 0)],
                    markers: vec![(200.0, "stage 2".into())],
                }],
                log_y,
            };
            let [png, svg] = chart.save(&dir.path().join(format!("loss-{log_y}"))).expect("save");
            assert_eq!(&std::fs::read(&png).expect("png")[..8], b"\x89PNG\r\n\x1a\n");
            let svg = std::fs::read_to_string(&svg).expect("svg");
            for text in ["Loss per domain", "step", "loss (nats/token)", "code train", "code valid", "stage 2"] {
                assert!(svg.contains(text), "{text} missing from the SVG");
            }
        }
        let _ = train;
    }

    #[test]
    fn ticks_are_round_numbers() {
        use super::{log_ticks, tick};
        assert_eq!(log_ticks(1.7, 6.0), vec![2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(log_ticks(0.05, 30.0), vec![0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!([tick(10.0), tick(2500.0), tick(40_000.0), tick(1_250_000.0), tick(0.25), tick(-3.0)], ["10", "2500", "40k", "1.25M", "0.25", "-3"]);
    }
}
