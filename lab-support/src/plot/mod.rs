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

mod bar;
mod figure;
mod grid;
mod line;
mod table;
#[cfg(test)]
mod tests;

pub use bar::BarChart;
pub use figure::Figure;
pub(crate) use grid::too_many_images;
pub use grid::{ImageGrid, Shade, MAX_GRID_IMAGES};
use line::tick_label;
pub use line::LinePlot;
pub use table::Table;

use crate::error::{LabError, Result};
use candle_core::{DType, Tensor};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../../data/fonts/DejaVuSans.ttf");
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
pub(crate) fn debug_figure(
    f: &mut std::fmt::Formatter<'_>,
    kind: &str,
    title: &str,
    display: impl FnOnce(),
) -> std::fmt::Result {
    if crate::notebook::in_notebook() {
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
