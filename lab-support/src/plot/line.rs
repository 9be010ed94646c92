//! [`LinePlot`]: loss curves, fitted functions, several series with a legend (SVG).

use super::*;

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
        LinePlot {
            title: title.into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![],
            y_range: None,
            log_y: false,
            size: (640, 400),
        }
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

    fn push_series(
        mut self,
        name: impl Into<String>,
        points: impl IntoIterator<Item = impl Point>,
        mark: Mark,
    ) -> Self {
        let points = points
            .into_iter()
            .map(|p| p.xy())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0))
            .collect();
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

    pub(super) fn bounds(&self) -> Result<((f64, f64), (f64, f64))> {
        if let Some((lo, hi)) = self.y_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(LabError::invalid(
                    "y_range",
                    format!("({lo}, {hi})"),
                    "two finite numbers with lo < hi, such as .y_range(0.0, 1.0)",
                ));
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
    pub(super) fn legend_corner(&self, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
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
            units
                .iter()
                .filter(|&&(x, y)| {
                    x >= left - 0.02 && x <= left + fw + 0.02 && y >= bottom - 0.02 && y <= bottom + fh + 0.02
                })
                .count()
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
            chart
                .configure_mesh()
                .x_desc(&self.x_label)
                .y_desc(&self.y_label)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .draw()
                .map_err(draw_err)?;
            draw_series(&mut chart, &self.series, corner)
        }
    }
}

/// A short axis label: `500` rather than `500.0`, `0.25`, `1e-6`.
pub(super) fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&v.abs()) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw_series<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &[Series],
    corner: SeriesLabelPosition,
) -> Result<()>
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
                Mark::Line => {
                    drawn.label(&s.name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], stroke))
                }
                Mark::Dashed => drawn.label(&s.name).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (6, 0)], stroke)
                        + PathElement::new(vec![(11, 0), (18, 0)], stroke)
                }),
                Mark::Points => drawn.label(&s.name).legend(move |(x, y)| Circle::new((x + 9, y), 4, color.filled())),
            };
        }
    }
    if series.iter().any(|s| !s.name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .position(corner)
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}
