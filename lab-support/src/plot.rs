//! Figures that render inline in Jupyter: line plots, probability bar charts and image grids.
//!
//! Each figure is a value. In an evcxr notebook, a cell that ends with one shows it, through its
//! `evcxr_display` method; `.save(path)` writes it to a file. evcxr keeps only the last output of
//! each kind per cell, so a figure is always one composite picture: [`Figure`] puts several
//! charts side by side.
//!
//! - [`LinePlot`] (SVG): loss curves, fitted functions, several series with a legend.
//! - [`BarChart`] (SVG): class probabilities, several groups (before/after) side by side.
//! - [`ImageGrid`] (PNG): images with captions, such as predictions or original / perturbation /
//!   adversarial.
//!
//! Text is laid out with the DejaVu Sans font shipped in `data/fonts/`, so no system font
//! library is needed.
//!
//! ```
//! use lab_support::plot::{Chart, LinePlot};
//! let plot = LinePlot::new("log2 and a guess")
//!     .labels("x", "y")
//!     .line("log2(x)", (1..=16).map(|x| (x as f64, (x as f64).log2())))
//!     .points("training points", [(1.0, 0.0), (2.0, 1.0), (4.0, 2.0), (8.0, 3.0), (16.0, 4.0)]);
//! assert!(plot.to_svg()?.contains("<svg"));
//! # Ok::<(), lab_support::LabError>(())
//! ```

use crate::error::{LabError, Result};
use crate::model::Classifier;
use candle_core::{DType, Tensor};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../data/fonts/DejaVuSans.ttf");
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; registering it cannot fail on a valid build.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn draw_err<E: std::fmt::Debug>(e: E) -> LabError {
    LabError::Other(format!("could not draw the figure: {e:?}"))
}

/// Prints `content` as one rich evcxr output of MIME type `mime`.
fn emit(mime: &str, content: &str) {
    println!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT");
}

/// Shows a figure inline, or the reason it could not be drawn as plain text.
///
/// As HTML with the SVG inline, not as `image/svg+xml`: JupyterLab shows the latter as an `<img>`
/// that it does not shrink to the notebook's width, so a wide figure was cut off on a laptop
/// screen. Inline, the SVG scales down to fit (it has a `viewBox`).
fn display_svg(svg: Result<String>) {
    match svg {
        Ok(svg) => emit("text/html", &scalable(&svg)),
        Err(e) => emit("text/plain", &format!("error: {}", e.message())),
    }
}

/// An SVG document that shrinks to the width of its container.
fn scalable(svg: &str) -> String {
    svg.replacen("<svg ", "<svg style=\"max-width:100%;height:auto\" ", 1)
}

/// Several figures one above the other, in one output.
///
/// evcxr merges everything one cell displays into a single output, and a notebook draws only one
/// kind of it: an image grid followed by a chart in the same cell shows the chart alone. A stack
/// is one HTML output holding both.
///
/// ```
/// use lab_support::prelude::*;
/// let model = Classifier::pretrained()?;
/// let (x, _) = mnist::test()?.get(0)?;
/// let stack = Stack::new()
///     .grid(&ImageGrid::new("a digit", 1).image(&x, "test digit #0")?)?
///     .chart(&BarChart::probabilities(&model, &x, "its probabilities")?)?;
/// assert!(stack.to_html().contains("<svg") && stack.to_html().contains("image/png"));
/// # Ok::<(), LabError>(())
/// ```
#[derive(Clone, Default)]
pub struct Stack {
    parts: Vec<String>,
}

impl Stack {
    /// An empty stack.
    pub fn new() -> Self {
        Stack::default()
    }

    /// Adds an image grid.
    pub fn grid(mut self, grid: &ImageGrid) -> Result<Self> {
        self.parts.push(format!("<img style=\"max-width:100%\" src=\"data:image/png;base64,{}\">", grid.png_base64()?));
        Ok(self)
    }

    /// Adds a chart or a figure.
    pub fn chart(mut self, chart: &impl Chart) -> Result<Self> {
        self.parts.push(scalable(&chart.to_svg()?));
        Ok(self)
    }

    /// The stack as one HTML fragment.
    pub fn to_html(&self) -> String {
        self.parts.iter().map(|p| format!("<div>{p}</div>")).collect()
    }

    /// Shows the stack in a notebook cell.
    pub fn evcxr_display(&self) {
        emit("text/html", &self.to_html());
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "Stack", &format!("{} figures", self.parts.len()), || self.evcxr_display())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| LabError::io(path, e))
}

/// Anything a plot takes as one `(x, y)` point: `(f64, f64)`, `(f32, f32)`, or a reference to one,
/// so a plot can borrow its data (`.line("loss", &points)`) and leave the variable for later cells.
pub trait Point {
    fn xy(&self) -> (f64, f64);
}

impl Point for (f64, f64) {
    fn xy(&self) -> (f64, f64) {
        *self
    }
}

impl Point for (f32, f32) {
    fn xy(&self) -> (f64, f64) {
        (self.0 as f64, self.1 as f64)
    }
}

impl<P: Point> Point for &P {
    fn xy(&self) -> (f64, f64) {
        (*self).xy()
    }
}

/// In an evcxr kernel (the notebooks), draws the figure; always writes a one-line summary.
///
/// Why a Debug impl draws: when a cell's last expression moves a variable (`let v = ...;
/// LinePlot::new("t").line("a", v)`), evcxr cannot store `v` after the cell and, to get the cell
/// compiled at all, shows the value through `format!("{:?}", ..)` instead of its `evcxr_display`.
/// Drawing here makes that cell show its figure as written. Outside a kernel (tests, programs)
/// Debug is only the summary.
pub(crate) fn debug_figure(f: &mut std::fmt::Formatter<'_>, kind: &str, title: &str, display: impl FnOnce()) -> std::fmt::Result {
    if crate::kernel::in_notebook() {
        display();
    }
    write!(f, "{kind} {title:?}")
}

/// `(i, value)` pairs for a sequence such as losses per step, ready for [`LinePlot::line`].
pub fn indexed(values: &[f32]) -> Vec<(f64, f64)> {
    values.iter().enumerate().map(|(i, &v)| (i as f64, v as f64)).collect()
}

/// A chart's size in pixels, kept between 160 and 2000 on each side: smaller has no room for the
/// axes, larger only makes the notebook heavier.
fn chart_size(width: u32, height: u32) -> (u32, u32) {
    (width.clamp(160, 2000), height.clamp(160, 2000))
}

/// The most charts one [`Figure`] lays out.
pub const MAX_FIGURE_CHARTS: usize = 36;

/// One chart that can take its place in a [`Figure`].
pub trait Chart {
    /// Draws the chart into `area`.
    fn draw(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<()>;
    /// Preferred size in pixels.
    fn size(&self) -> (u32, u32);

    /// The chart alone as an SVG document.
    fn to_svg(&self) -> Result<String> {
        register_font();
        let mut svg = String::new();
        {
            let area = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            area.fill(&WHITE).map_err(draw_err)?;
            self.draw(&area)?;
            area.present().map_err(draw_err)?;
        }
        Ok(svg)
    }
}

#[derive(Clone, Debug)]
enum Mark {
    Line,
    Points,
    Dashed,
}

#[derive(Clone, Debug)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    mark: Mark,
}

/// A line plot with any number of named series. A series named `""` is drawn but left out of
/// the legend; with no named series there is no legend at all. The legend goes in the corner
/// where it covers the fewest data points.
#[derive(Clone)]
pub struct LinePlot {
    title: String,
    x_label: String,
    y_label: String,
    series: Vec<Series>,
    y_range: Option<(f64, f64)>,
    log_y: bool,
    size: (u32, u32),
}

impl LinePlot {
    /// An empty plot with a title.
    pub fn new(title: impl Into<String>) -> Self {
        LinePlot { title: title.into(), x_label: "x".into(), y_label: "y".into(), series: vec![], y_range: None, log_y: false, size: (640, 400) }
    }

    /// Axis labels.
    pub fn labels(mut self, x: impl Into<String>, y: impl Into<String>) -> Self {
        self.x_label = x.into();
        self.y_label = y.into();
        self
    }

    /// Adds a solid line.
    pub fn line(self, name: impl Into<String>, points: impl IntoIterator<Item = impl Point>) -> Self {
        self.push_series(name, points, Mark::Line)
    }

    /// Adds a dashed line (for a reference such as the true function).
    pub fn dashed(self, name: impl Into<String>, points: impl IntoIterator<Item = impl Point>) -> Self {
        self.push_series(name, points, Mark::Dashed)
    }

    /// Adds several solid lines at once, from `(name, points)` pairs.
    pub fn lines(mut self, series: &[(String, Vec<(f64, f64)>)]) -> Self {
        for (name, points) in series {
            self = self.line(name.clone(), points);
        }
        self
    }

    /// Adds points drawn as dots (for training data).
    pub fn points(self, name: impl Into<String>, points: impl IntoIterator<Item = impl Point>) -> Self {
        self.push_series(name, points, Mark::Points)
    }

    /// Fixes the y range instead of fitting it to the data (finite, `lo < hi`; checked when drawn).
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// A logarithmic y axis (for losses that fall over decades); values <= 0 are dropped.
    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// Size in pixels.
    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.size = chart_size(width, height);
        self
    }

    fn push_series(mut self, name: impl Into<String>, points: impl IntoIterator<Item = impl Point>, mark: Mark) -> Self {
        let points = points.into_iter().map(|p| p.xy()).filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0)).collect();
        self.series.push(Series { name: name.into(), points, mark });
        self
    }

    /// Writes the plot as SVG.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), self.to_svg()?.as_bytes())
    }

    /// Shows the plot in a notebook cell.
    pub fn evcxr_display(&self) {
        display_svg(self.to_svg())
    }

    fn bounds(&self) -> Result<((f64, f64), (f64, f64))> {
        if let Some((lo, hi)) = self.y_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(LabError::invalid("y_range", format!("({lo}, {hi})"), "two finite numbers with lo < hi, such as .y_range(0.0, 1.0)"));
            }
            if self.log_y && lo <= 0.0 {
                return Err(LabError::invalid("y_range", format!("({lo}, {hi})"), "lo > 0 on a log_y() axis"));
            }
        }
        let all = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in all {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if let Some(r) = self.y_range {
            (y0, y1) = r;
        }
        let pad = |lo: f64, hi: f64| if hi - lo < 1e-12 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
        let (x0, x1) = pad(x0, x1);
        let (y0, y1) = pad(y0, y1);
        let margin = if self.y_range.is_some() || self.log_y { 0.0 } else { 0.05 * (y1 - y0) };
        Ok(((x0, x1), (y0 - margin, y1 + margin)))
    }

    /// The corner where the legend covers the fewest data points.
    fn legend_corner(&self, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
        let named: Vec<&Series> = self.series.iter().filter(|s| !s.name.is_empty()).collect();
        // The legend's size as a fraction of the plotting area, from the default 640x400 layout.
        let (w, h) = self.size;
        let longest = named.iter().map(|s| s.name.chars().count()).max().unwrap_or(0) as f64;
        let fw = ((longest * 7.5 + 45.0) / (w as f64 - 90.0)).min(1.0);
        let fh = ((named.len() as f64 * 19.0 + 14.0) / (h as f64 - 80.0)).min(1.0);
        let to_unit = |(x, y): (f64, f64)| {
            let ux = (x - x0) / (x1 - x0);
            let uy = if self.log_y { (y.ln() - y0.ln()) / (y1.ln() - y0.ln()) } else { (y - y0) / (y1 - y0) };
            (ux, uy)
        };
        let units: Vec<(f64, f64)> = self.series.iter().flat_map(|s| s.points.iter().copied()).map(to_unit).collect();
        let corners = [
            (SeriesLabelPosition::UpperLeft, (0.0, 1.0 - fh)),
            (SeriesLabelPosition::UpperRight, (1.0 - fw, 1.0 - fh)),
            (SeriesLabelPosition::LowerLeft, (0.0, 0.0)),
            (SeriesLabelPosition::LowerRight, (1.0 - fw, 0.0)),
        ];
        let covered = |(left, bottom): (f64, f64)| {
            units.iter().filter(|&&(x, y)| x >= left - 0.02 && x <= left + fw + 0.02 && y >= bottom - 0.02 && y <= bottom + fh + 0.02).count()
        };
        // Ties keep the first corner, so a plot with room everywhere has its legend upper left.
        let mut best = (SeriesLabelPosition::UpperLeft, usize::MAX);
        for (corner, origin) in corners {
            let n = covered(origin);
            if n < best.1 {
                best = (corner, n);
            }
        }
        best.0
    }
}

impl std::fmt::Debug for LinePlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "LinePlot", &self.title, || self.evcxr_display())
    }
}

impl Chart for LinePlot {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<()> {
        let ((x0, x1), (y0, y1)) = self.bounds()?;
        let corner = self.legend_corner((x0, x1), (y0, y1));
        let mut builder = ChartBuilder::on(area);
        builder.caption(&self.title, ("sans-serif", 18)).margin(12).x_label_area_size(42).y_label_area_size(62);
        let tick = |v: &f64| tick_label(*v);
        if self.log_y {
            let mut chart = builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .x_label_formatter(&tick)
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .draw()
                .map_err(draw_err)?;
            draw_series(&mut chart, &self.series, corner)
        } else {
            let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(draw_err)?;
            chart.configure_mesh().x_desc(&self.x_label).y_desc(&self.y_label).x_label_formatter(&tick).y_label_formatter(&tick).draw().map_err(draw_err)?;
            draw_series(&mut chart, &self.series, corner)
        }
    }
}

/// A short axis label: `500` rather than `500.0`, `0.25`, `1e-6`.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&v.abs()) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw_series<'a, X, Y>(chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>, series: &[Series], corner: SeriesLabelPosition) -> Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (i, s) in series.iter().enumerate() {
        // Data points are black, so they never share a colour with a line.
        let color = if matches!(s.mark, Mark::Points) { BLACK } else { PALETTE[i % PALETTE.len()] };
        let drawn = match s.mark {
            Mark::Line => chart.draw_series(LineSeries::new(s.points.clone(), color.stroke_width(2))),
            Mark::Dashed => chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, color.stroke_width(2))),
            Mark::Points => chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled()))),
        }
        .map_err(draw_err)?;
        if !s.name.is_empty() {
            // The swatch looks like the series: a line, a dashed line, a dot.
            let stroke = color.stroke_width(2);
            match s.mark {
                Mark::Line => drawn.label(&s.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], stroke)),
                Mark::Dashed => drawn.label(&s.name).legend(move |(x, y)| {
                    EmptyElement::at((x, y)) + PathElement::new(vec![(0, 0), (6, 0)], stroke) + PathElement::new(vec![(11, 0), (18, 0)], stroke)
                }),
                Mark::Points => drawn.label(&s.name).legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled())),
            };
        }
    }
    if series.iter().any(|s| !s.name.is_empty()) {
        chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK.mix(0.4)).position(corner).draw().map_err(draw_err)?;
    }
    Ok(())
}

/// A bar chart of class probabilities; several groups (for example before / after an attack)
/// are drawn side by side for each class.
#[derive(Clone)]
pub struct BarChart {
    title: String,
    classes: Vec<String>,
    groups: Vec<(String, Vec<f32>)>,
    y_label: String,
    size: (u32, u32),
}

impl BarChart {
    /// An empty chart over the given class names.
    pub fn new(title: impl Into<String>, classes: &[&str]) -> Self {
        BarChart {
            title: title.into(),
            classes: classes.iter().map(|s| s.to_string()).collect(),
            groups: vec![],
            y_label: "probability".into(),
            size: (640, 360),
        }
    }

    /// Adds a group of bars, one value per class.
    pub fn group(mut self, name: impl Into<String>, values: &[f32]) -> Self {
        self.groups.push((name.into(), values.to_vec()));
        self
    }

    /// The model's class probabilities for one image `(1, 1, 28, 28)`, as a one-group chart.
    pub fn probabilities(model: &Classifier, image: &Tensor, title: impl Into<String>) -> Result<Self> {
        let probs = model.probabilities(image)?.get(0)?.to_vec1::<f32>()?;
        Ok(BarChart::new(title, model.class_names()).group("", &probs))
    }

    /// Size in pixels.
    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.size = chart_size(width, height);
        self
    }

    /// A figure of one probability chart per named image, `columns` to a row.
    pub fn probability_panels(model: &Classifier, images: &[(&str, Tensor)], columns: usize, title: &str) -> Result<Figure> {
        let mut figure = Figure::new(title, columns);
        for (name, image) in images {
            figure = figure.add(BarChart::probabilities(model, image, *name)?.with_size(340, 230));
        }
        Ok(figure)
    }

    /// Writes the chart as SVG.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), self.to_svg()?.as_bytes())
    }

    /// Shows the chart in a notebook cell.
    pub fn evcxr_display(&self) {
        display_svg(self.to_svg())
    }
}

impl Chart for BarChart {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<()> {
        let n = self.classes.len();
        if let Some((name, values)) = self.groups.iter().find(|(_, v)| v.len() != n) {
            return Err(LabError::invalid("bar group", format!("`{name}` with {} values", values.len()), format!("one value per class ({n})")));
        }
        let top = self.groups.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0f32, f32::max) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(if n > 5 && self.classes.iter().any(|c| c.len() > 3) { 70 } else { 36 })
            .y_label_area_size(56)
            // A margin left of the first bar, so its value label never runs into the y axis.
            .build_cartesian_2d(-0.8f64..(n as f64 - 0.4), 0f64..top * 1.1)
            .map_err(draw_err)?;
        let names = self.classes.clone();
        // Small panels are shrunk with the rest of a figure: their text starts larger.
        let text = if self.size.0 < 480 { 15 } else { 13 };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_labels(6)
            .label_style(("sans-serif", text))
            .axis_desc_style(("sans-serif", text))
            .y_label_formatter(&|v| tick_label(*v))
            .x_labels(n + 1)
            .x_label_formatter(&move |x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 { names.get(i as usize).cloned().unwrap_or_default() } else { String::new() }
            })
            .x_desc("class")
            .y_desc(&self.y_label)
            .draw()
            .map_err(draw_err)?;
        let k = self.groups.len().max(1) as f64;
        let width = 0.8 / k;
        for (g, (name, values)) in self.groups.iter().enumerate() {
            let color = PALETTE[g % PALETTE.len()];
            let left = -0.4 + g as f64 * width;
            let bars = values.iter().enumerate().map(move |(i, &v)| {
                let x = i as f64 + left;
                Rectangle::new([(x, 0.0), (x + width * 0.92, v as f64)], color.filled())
            });
            let drawn = chart.draw_series(bars).map_err(draw_err)?;
            if !name.is_empty() {
                drawn.label(name).legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 16, y + 4)], color.filled()));
            }
            // The winning class gets its value written on top.
            if let Some((i, &v)) = values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)) {
                let x = i as f64 + left + width * 0.46;
                chart
                    .draw_series(std::iter::once(Text::new(
                        format!("{:.0}%", v * 100.0),
                        (x, v as f64),
                        ("sans-serif", text).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )))
                    .map_err(draw_err)?;
            }
        }
        if self.groups.iter().any(|(name, _)| !name.is_empty()) {
            chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.4)).draw().map_err(draw_err)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for BarChart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "BarChart", &self.title, || self.evcxr_display())
    }
}

/// Several charts side by side (`columns` per row) in one SVG output.
pub struct Figure {
    title: String,
    columns: usize,
    charts: Vec<Box<dyn Chart>>,
}

impl Figure {
    /// An empty figure that lays charts out `columns` to a row.
    pub fn new(title: impl Into<String>, columns: usize) -> Self {
        Figure { title: title.into(), columns: columns.max(1), charts: vec![] }
    }

    /// Adds a chart.
    // A builder step named as notebooks read it (`Figure::new(..).add(chart)`), not `+`.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, chart: impl Chart + 'static) -> Self {
        self.charts.push(Box::new(chart));
        self
    }

    /// Writes the figure as SVG.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), self.to_svg()?.as_bytes())
    }

    /// Shows the figure in a notebook cell.
    pub fn evcxr_display(&self) {
        display_svg(self.to_svg())
    }

    /// The size of each chart's cell: the largest chart's, but narrower when that would make the
    /// figure wider than about 960 px. A notebook shrinks a wider figure to its width, and the
    /// text with it; a narrower cell keeps the text at its size.
    fn cell(&self) -> (u32, u32) {
        let (w, h) = self.charts.iter().map(|c| c.size()).fold((0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1)));
        let cols = self.columns.min(self.charts.len()).max(1) as u32;
        (w.min((960 / cols).max(320)), h)
    }
}

impl std::fmt::Debug for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "Figure", &self.title, || self.evcxr_display())
    }
}

impl Chart for Figure {
    fn size(&self) -> (u32, u32) {
        let (w, h) = self.cell();
        let cols = self.columns.min(self.charts.len()).max(1) as u32;
        let rows = self.charts.len().div_ceil(self.columns).max(1) as u32;
        (w * cols, h * rows + 36)
    }

    fn draw(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<()> {
        if self.charts.len() > MAX_FIGURE_CHARTS {
            return Err(LabError::invalid("charts in one figure", self.charts.len(), format!("at most {MAX_FIGURE_CHARTS}: split them over several figures")));
        }
        let area = area.titled(&self.title, ("sans-serif", 22)).map_err(draw_err)?;
        let rows = self.charts.len().div_ceil(self.columns).max(1);
        let cols = self.columns.min(self.charts.len()).max(1);
        for (chart, cell) in self.charts.iter().zip(area.split_evenly((rows, cols))) {
            chart.draw(&cell)?;
        }
        Ok(())
    }
}

/// Loss and target-class probability for each step of a crafting history (the images after each
/// step), side by side; step 0 is the original.
pub fn crafting_progress(model: &Classifier, original: &Tensor, history: &[Tensor], target: u32) -> Result<Figure> {
    crate::grad::check_class(target)?;
    let mut images = vec![original.clone()];
    images.extend(history.iter().cloned());
    let batch = Tensor::cat(&images, 0)?;
    let logits = model.logits(&batch)?;
    let log_p = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?.narrow(1, target as usize, 1)?.flatten_all()?.to_vec1::<f32>()?;
    let loss: Vec<(f64, f64)> = log_p.iter().enumerate().map(|(i, &l)| (i as f64, -l as f64)).collect();
    let prob: Vec<(f64, f64)> = log_p.iter().enumerate().map(|(i, &l)| (i as f64, l.exp() as f64)).collect();
    Ok(Figure::new(format!("Gradient descent on the input, toward class {target}"), 3)
        .add(LinePlot::new("loss E = -log p(target)").labels("step", "loss").line("loss", loss).with_size(480, 340))
        .add(LinePlot::new(format!("p({target})")).labels("step", "probability").y_range(0.0, 1.0).line(format!("p({target})"), prob).with_size(480, 340)))
}

/// A small table of numbers, shown as HTML in a notebook (plain text elsewhere).
#[derive(Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: vec![] }
    }

    /// Adds a row of already formatted cells.
    pub fn row(mut self, cells: Vec<String>) -> Self {
        self.rows.push(cells);
        self
    }

    /// Shows the table in a notebook cell.
    pub fn evcxr_display(&self) {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;");
        let head: String = self.headers.iter().map(|h| format!("<th>{}</th>", esc(h))).collect();
        let body: String = self
            .rows
            .iter()
            .map(|r| format!("<tr>{}</tr>", r.iter().map(|c| format!("<td style=\"text-align:right\">{}</td>", esc(c))).collect::<String>()))
            .collect();
        emit("text/html", &format!("<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"));
        emit("text/plain", &self.to_string());
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "Table", &self.headers.join(" | "), || self.evcxr_display())
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| self.rows.iter().filter_map(|r| r.get(i)).map(|c| c.len()).chain([self.headers[i].len()]).max().unwrap_or(0))
            .collect();
        let line = |cells: &[String]| cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ");
        writeln!(f, "{}", line(&self.headers))?;
        for r in &self.rows {
            writeln!(f, "{}", line(r))?;
        }
        Ok(())
    }
}

/// How a grid cell's values map to colours.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shade {
    /// `[0, 1]` as black to white, like the model sees it.
    Grey,
    /// Signed values scaled so the largest magnitude is fully saturated: blue negative, white
    /// zero, red positive. For perturbations too small to see otherwise.
    Diverging,
}

#[derive(Clone, Debug)]
struct Cell {
    pixels: Vec<f32>,
    caption: String,
    shade: Shade,
    highlight: bool,
}

/// The most images one grid shows: a grid of all 10,000 test digits would embed 25 MB in the
/// notebook, and no one can look at more than a few hundred at once.
pub const MAX_GRID_IMAGES: usize = 400;

/// The largest grid picture, in pixels on each side.
const MAX_GRID_SIDE: u64 = 8192;

/// A grid of 28x28 images with captions, rendered as one PNG. Signed images (perturbations) are
/// drawn blue-white-red, red for a pixel made brighter, with a legend saying so.
#[derive(Clone)]
pub struct ImageGrid {
    title: String,
    columns: usize,
    scale: u32,
    cells: Vec<Cell>,
}

impl ImageGrid {
    /// An empty grid with `columns` images per row.
    pub fn new(title: impl Into<String>, columns: usize) -> Self {
        ImageGrid { title: title.into(), columns: columns.max(1), scale: 4, cells: vec![] }
    }

    /// Adds one image: any tensor of 784 values, such as `(1, 1, 28, 28)` or `(28, 28)`.
    pub fn image(self, image: &Tensor, caption: impl Into<String>) -> Result<Self> {
        self.push(image, caption, Shade::Grey, false)
    }

    /// Adds one image whose caption is drawn in red, to flag it (a wrong prediction, say).
    pub fn flagged(self, image: &Tensor, caption: impl Into<String>) -> Result<Self> {
        self.push(image, caption, Shade::Grey, true)
    }

    /// Adds a perturbation (signed values), scaled up to be visible.
    pub fn perturbation(self, delta: &Tensor, caption: impl Into<String>) -> Result<Self> {
        self.push(delta, caption, Shade::Diverging, false)
    }

    fn push(mut self, image: &Tensor, caption: impl Into<String>, shade: Shade, highlight: bool) -> Result<Self> {
        if self.cells.len() >= MAX_GRID_IMAGES {
            return Err(too_many_images(self.cells.len() + 1));
        }
        let pixels = image.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if pixels.len() != 28 * 28 {
            return Err(LabError::Shape { what: "a grid image".into(), expected: "784 values (28x28)".into(), got: image.dims().to_vec() });
        }
        self.cells.push(Cell { pixels, caption: caption.into(), shade, highlight });
        Ok(self)
    }

    /// The first images of a batch with the model's prediction and confidence as captions;
    /// predictions that disagree with `labels` (if given) are flagged in red.
    pub fn predictions(model: &Classifier, images: &Tensor, labels: Option<&Tensor>, columns: usize) -> Result<Self> {
        let n = images.dims().first().copied().unwrap_or(0);
        if n > MAX_GRID_IMAGES {
            return Err(too_many_images(n));
        }
        let preds = model.predict(images)?;
        let names = model.class_names();
        let labels = labels.map(|l| l.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()).transpose()?;
        if let Some(labels) = &labels {
            if labels.len() != preds.len() {
                return Err(LabError::invalid("labels", format!("{} label(s)", labels.len()), format!("one label per image ({})", preds.len())));
            }
            if let Some(bad) = labels.iter().find(|&&l| l as usize >= names.len()) {
                return Err(LabError::invalid("label", bad, format!("a class index in 0..={}", names.len() - 1)));
            }
        }
        let mut grid = ImageGrid::new("What the model sees", columns);
        for (i, p) in preds.iter().enumerate() {
            let image = images.get(i)?;
            let caption = format!("{} ({:.0}%)", names[p.class], p.confidence * 100.0);
            grid = match labels.as_ref().and_then(|l| l.get(i)) {
                Some(&l) if l as usize != p.class => grid.flagged(&image, format!("{caption} true {}", names[l as usize]))?,
                _ => grid.image(&image, caption)?,
            };
        }
        Ok(grid)
    }

    /// Named images, each captioned with its name and the model's answer and confidence.
    pub fn named_predictions(model: &Classifier, images: &[(&str, Tensor)], columns: usize) -> Result<Self> {
        let names = model.class_names();
        let mut grid = ImageGrid::new("What the model answers", columns);
        for (name, image) in images {
            let p = model.predict(image)?[0];
            grid = grid.image(image, format!("{name}: {} ({:.0}%)", names[p.class], p.confidence * 100.0))?;
        }
        Ok(grid)
    }

    /// One row per image: original, perturbation (scaled up), adversarial, each captioned with
    /// the model's prediction and confidence.
    pub fn attack(model: &Classifier, original: &Tensor, adversarial: &Tensor) -> Result<Self> {
        let before = model.predict(original)?;
        let after = model.predict(adversarial)?;
        let names = model.class_names();
        let mut grid = ImageGrid::new("original | perturbation (scaled) | adversarial", 3);
        for i in 0..before.len() {
            let (x, adv) = (original.get(i)?, adversarial.get(i)?);
            let delta = (&adv - &x)?;
            let linf = delta.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let (b, a) = (before[i], after[i]);
            grid = grid
                .image(&x, format!("{} ({:.0}%)", names[b.class], b.confidence * 100.0))?
                .perturbation(&delta, format!("max |delta| {linf:.3}"))?;
            let caption = format!("{} ({:.0}%)", names[a.class], a.confidence * 100.0);
            grid = if a.class != b.class { grid.flagged(&adv, caption)? } else { grid.image(&adv, caption)? };
        }
        Ok(grid)
    }

    /// Pixels per image pixel (default 4, at most 16).
    pub fn with_scale(mut self, scale: u32) -> Self {
        self.scale = scale.clamp(1, 16);
        self
    }

    /// The grid as PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        register_font();
        let side = 28 * self.scale;
        let legend = self.cells.iter().any(|c| c.shade == Shade::Diverging);
        let (pad, caption_h, title_h, legend_h) = (8u32, 22u32, if self.title.is_empty() { 0 } else { 30 }, if legend { 26 } else { 0 });
        let cols = self.columns.min(self.cells.len()).max(1) as u64;
        let rows = self.cells.len().div_ceil(self.columns).max(1) as u64;
        let cell_w = (side + pad).max(150) as u64;
        // Wide enough for the title and the legend too (a one-image grid is narrower than its title).
        let text_w = |text: &str, size: u32| ("sans-serif", size).into_font().box_size(text).map(|(w, _)| w).unwrap_or(10 * text.chars().count() as u32) as u64;
        let min_w = text_w(&self.title, 18).max(if legend { text_w(SIGNED_LEGEND, 13) + 150 } else { 0 }) + 2 * pad as u64;
        let w = (cols * cell_w + pad as u64).max(min_w);
        let h = (title_h + legend_h) as u64 + rows * (side + caption_h + pad) as u64 + pad as u64;
        if w > MAX_GRID_SIDE || h > MAX_GRID_SIDE {
            return Err(LabError::invalid(
                "grid size",
                format!("{w}x{h} pixels"),
                format!("at most {MAX_GRID_SIDE} on each side: show fewer images, use more columns, or a smaller `with_scale`"),
            ));
        }
        let (w, h) = (w as u32, h as u32);
        let mut rgb = vec![255u8; w as usize * h as usize * 3];
        {
            let area = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            if !self.title.is_empty() {
                area.draw_text(&self.title, &("sans-serif", 18).into_font().color(&BLACK), (pad as i32, 6)).map_err(draw_err)?;
            }
            if legend {
                draw_signed_legend(&area, pad as i32, title_h as i32 + 2)?;
            }
            let (cols, cell_w) = (cols as u32, cell_w as u32);
            for (i, cell) in self.cells.iter().enumerate() {
                let (r, c) = (i as u32 / cols, i as u32 % cols);
                let x0 = pad + c * cell_w + (cell_w - pad - side) / 2;
                let y0 = title_h + legend_h + r * (side + caption_h + pad);
                let max_abs = cell.pixels.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
                for (j, &v) in cell.pixels.iter().enumerate() {
                    let color = shade(v, cell.shade, max_abs);
                    let (px, py) = (x0 + (j as u32 % 28) * self.scale, y0 + (j as u32 / 28) * self.scale);
                    area.draw(&Rectangle::new([(px as i32, py as i32), ((px + self.scale) as i32, (py + self.scale) as i32)], color.filled()))
                        .map_err(draw_err)?;
                }
                let color = if cell.highlight { RGBColor(200, 0, 0) } else { BLACK };
                let style = ("sans-serif", 14).into_font().color(&color).pos(Pos::new(HPos::Center, VPos::Top));
                let cx = (pad + c * cell_w + (cell_w - pad) / 2) as i32;
                area.draw_text(&cell.caption, &style, (cx, (y0 + side + 3) as i32)).map_err(draw_err)?;
            }
            area.present().map_err(draw_err)?;
        }
        let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| LabError::Other("image buffer has the wrong size".into()))?;
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| LabError::Other(format!("could not encode PNG: {e}")))?;
        Ok(png)
    }

    /// Writes the grid as a PNG file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.to_png()?)
    }

    /// The PNG in base64, as notebooks embed images.
    fn png_base64(&self) -> Result<String> {
        use base64::Engine;
        Ok(base64::engine::general_purpose::STANDARD.encode(self.to_png()?))
    }

    /// Shows the grid in a notebook cell.
    pub fn evcxr_display(&self) {
        match self.png_base64() {
            Ok(png) => emit("image/png", &png),
            Err(e) => emit("text/plain", &format!("error: {}", e.message())),
        }
    }
}

impl std::fmt::Debug for ImageGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "ImageGrid", &self.title, || self.evcxr_display())
    }
}

fn too_many_images(n: usize) -> LabError {
    LabError::invalid(
        "images in one grid",
        n,
        format!("at most {MAX_GRID_IMAGES}: show a part, such as `test.take(32)?` or `images.narrow(0, start, 32)?`"),
    )
}

/// What the colours of a signed image mean.
const SIGNED_LEGEND: &str = "blue: darker   white: unchanged   red: brighter";

/// A colour bar from blue through white to red, and what it means.
fn draw_signed_legend(area: &DrawingArea<BitMapBackend<'_>, Shift>, x: i32, y: i32) -> Result<()> {
    for i in 0..120 {
        let color = shade(i as f32 / 59.5 - 1.0, Shade::Diverging, 1.0);
        area.draw(&Rectangle::new([(x + i, y + 4), (x + i + 1, y + 18)], color.filled())).map_err(draw_err)?;
    }
    area.draw(&Rectangle::new([(x - 1, y + 3), (x + 120, y + 19)], BLACK.mix(0.5))).map_err(draw_err)?;
    let style = ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center));
    area.draw_text(SIGNED_LEGEND, &style, (x + 130, y + 11)).map_err(draw_err)
}

fn shade(v: f32, shade: Shade, max_abs: f32) -> RGBColor {
    match shade {
        Shade::Grey => {
            let g = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            RGBColor(g, g, g)
        }
        Shade::Diverging => {
            let t = (v / max_abs).clamp(-1.0, 1.0);
            let fade = |t: f32| (255.0 * (1.0 - t.abs())).round() as u8;
            if t >= 0.0 { RGBColor(255, fade(t), fade(t)) } else { RGBColor(fade(t), fade(t), 255) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mnist;

    #[test]
    fn line_plot_svg_has_title_labels_and_legend() {
        let svg = LinePlot::new("Loss per step").labels("step", "loss").line("loss", [(0.0, 2.0), (1.0, 1.0), (2.0, 0.5)]).to_svg().unwrap();
        for text in ["Loss per step", "step", "loss", "<polyline", "<svg"] {
            assert!(svg.contains(text), "missing {text}");
        }
        let with_legend = LinePlot::new("one").line("named", [(0.0, 1.0), (1.0, 0.0)]).to_svg().unwrap();
        let mixed = LinePlot::new("one").line("named", [(0.0, 1.0), (1.0, 0.0)]).line("", [(0.0, 0.5), (1.0, 0.5)]).to_svg().unwrap();
        let unnamed = LinePlot::new("one").line("", [(0.0, 1.0), (1.0, 0.0)]).to_svg().unwrap();
        let boxes = |svg: &str| svg.matches("<rect").count();
        assert_eq!(boxes(&mixed), boxes(&with_legend), "an unnamed series must not get a legend entry");
        assert!(boxes(&unnamed) < boxes(&with_legend), "no named series, no legend");
        let log = LinePlot::new("log").log_y().line("l", [(0.0, 1.0), (1.0, 0.01), (2.0, 0.0)]).to_svg().unwrap();
        assert!(log.contains("<svg"));
    }

    #[test]
    fn bar_chart_checks_its_groups() {
        let ok = BarChart::new("p", &["a", "b", "c"]).group("before", &[0.1, 0.7, 0.2]).to_svg().unwrap();
        assert!(ok.contains("70%") && ok.contains("before"));
        let bad = BarChart::new("p", &["a", "b", "c"]).group("g", &[0.5, 0.5]).to_svg().unwrap_err().to_string();
        assert!(bad.contains("one value per class"), "{bad}");
    }

    #[test]
    fn image_grid_renders_a_png_of_the_right_size() {
        let model = Classifier::pretrained().unwrap();
        let set = mnist::test().unwrap().take(8).unwrap();
        let grid = ImageGrid::predictions(&model, &set.images, Some(&set.labels), 4).unwrap();
        let png = grid.to_png().unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.width(), 4 * 150 + 8);
        // The digits are there: some pixels are white, some black.
        assert!(img.pixels().any(|p| p.0 == [0, 0, 0]) && img.pixels().any(|p| p.0 == [255, 255, 255]));
        let wrong = ImageGrid::new("", 2).image(&Tensor::zeros((3, 3), DType::F32, &candle_core::Device::Cpu).unwrap(), "x");
        assert!(wrong.unwrap_err().to_string().contains("784"));
    }

    #[test]
    fn bad_figure_input_is_an_error_not_a_panic() {
        let model = Classifier::pretrained().unwrap();
        let set = mnist::test().unwrap().take(4).unwrap();
        let twelve = Tensor::new(&[1u32, 12, 3, 4], &candle_core::Device::Cpu).unwrap();
        let msg = ImageGrid::predictions(&model, &set.images, Some(&twelve), 4).unwrap_err().to_string();
        assert!(msg.contains("12") && msg.contains("0..=9"), "{msg}");
        let all = mnist::test().unwrap();
        let msg = ImageGrid::predictions(&model, &all.images, None, 100).unwrap_err().to_string();
        assert!(msg.contains("take(32)"), "{msg}");
        // The biggest grid allowed, at the biggest scale, stays a clean error (no overflow).
        let (x, _) = all.get(0).unwrap();
        let mut big = ImageGrid::new("big", 1).with_scale(16);
        for _ in 0..MAX_GRID_IMAGES {
            big = big.image(&x, "").unwrap();
        }
        assert!(big.clone().image(&x, "").unwrap_err().to_string().contains("at most 400"));
        assert!(big.to_png().unwrap_err().to_string().contains("8192"));
        for (lo, hi) in [(f64::NAN, f64::NAN), (1.0, 0.0), (0.0, f64::INFINITY)] {
            let msg = LinePlot::new("t").line("a", [(0.0, 1.0)]).y_range(lo, hi).to_svg().unwrap_err().to_string();
            assert!(msg.contains("y_range"), "{msg}");
        }
    }

    #[test]
    fn figures_borrow_their_points() {
        let v = vec![(0.0, 1.0), (1.0, 2.0)];
        let svg = LinePlot::new("borrowed").line("a", &v).dashed("b", &v).points("c", v.iter()).to_svg().unwrap();
        assert!(svg.contains("borrowed"));
        assert_eq!(v.len(), 2, "v is still there");
        let f32s = [(0.0f32, 1.0f32), (1.0, 0.5)];
        assert!(LinePlot::new("f32").line("a", f32s).to_svg().is_ok());
    }

    #[test]
    fn the_legend_goes_where_the_data_is_not() {
        let rising: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, i as f64)).collect();
        let falling: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 50.0 - i as f64)).collect();
        let high: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 1.0 - 0.001 * i as f64)).collect();
        let corner = |p: &LinePlot| {
            let ((x0, x1), (y0, y1)) = p.bounds().unwrap();
            format!("{:?}", p.legend_corner((x0, x1), (y0, y1)))
        };
        assert_eq!(corner(&LinePlot::new("r").line("a series", &rising)), "UpperLeft");
        assert_eq!(corner(&LinePlot::new("f").line("a series", &falling)), "UpperRight");
        // A probability near 1 from the start: the legend goes below it.
        let p = LinePlot::new("p").y_range(0.0, 1.0).line("p(4)", &high);
        assert!(corner(&p).starts_with("Lower"), "{}", corner(&p));
    }

    #[test]
    fn legend_swatches_look_like_their_series() {
        let pts = [(0.0, 0.0), (1.0, 1.0)];
        let count = |svg: String, tag: &str| svg.matches(tag).count();
        // What naming a series adds: the legend's box and text, and the swatch.
        let added = |named: LinePlot, unnamed: LinePlot, tag: &str| count(named.to_svg().unwrap(), tag) - count(unnamed.to_svg().unwrap(), tag);
        // A dashed series' swatch is two strokes, a line's one stroke; neither is a filled box
        // (the two added rects are the legend's background and border).
        assert_eq!(added(LinePlot::new("d").dashed("truth", pts), LinePlot::new("d").dashed("", pts), "<polyline"), 2);
        assert_eq!(added(LinePlot::new("d").line("fit", pts), LinePlot::new("d").line("", pts), "<polyline"), 1);
        assert_eq!(added(LinePlot::new("d").line("fit", pts), LinePlot::new("d").line("", pts), "<rect"), 2);
    }

    #[test]
    fn signed_images_carry_a_colour_legend() {
        let (x, _) = mnist::test().unwrap().get(0).unwrap();
        let plain = ImageGrid::new("", 1).image(&x, "x").unwrap().to_png().unwrap();
        let signed = ImageGrid::new("", 1).perturbation(&(x.clone() - 0.5).unwrap(), "delta").unwrap().to_png().unwrap();
        let (p, s) = (image::load_from_memory(&plain).unwrap().to_rgb8(), image::load_from_memory(&signed).unwrap().to_rgb8());
        assert!(s.height() > p.height() && s.width() > p.width(), "no room for the legend");
        // The colour bar: pure blue at its left end, pure red at its right.
        let row: Vec<[u8; 3]> = (0..s.width()).map(|x| s.get_pixel(x, 10).0).collect();
        assert!(row.contains(&[0, 0, 255]) && row.contains(&[255, 0, 0]), "no blue-to-red bar");
    }

    #[test]
    fn debug_text_outside_a_notebook_is_a_summary() {
        assert_eq!(format!("{:?}", LinePlot::new("t")), "LinePlot \"t\"");
        assert_eq!(format!("{:?}", BarChart::new("b", &["a"])), "BarChart \"b\"");
    }
}
