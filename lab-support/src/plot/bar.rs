//! [`BarChart`]: class probabilities, several groups (before / after) side by side (SVG).

use super::*;

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

    /// Size in pixels.
    pub fn with_size(mut self, width: u32, height: u32) -> Self {
        self.size = chart_size(width, height);
        self
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
            return Err(LabError::invalid(
                "bar group",
                format!("`{name}` with {} values", values.len()),
                format!("one value per class ({n})"),
            ));
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
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
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
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .draw()
                .map_err(draw_err)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for BarChart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_figure(f, "BarChart", &self.title, || self.evcxr_display())
    }
}
