//! [`Figure`]: several charts side by side in one output, since evcxr keeps one per cell.

use super::*;

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
            return Err(LabError::invalid(
                "charts in one figure",
                self.charts.len(),
                format!("at most {MAX_FIGURE_CHARTS}: split them over several figures"),
            ));
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
