//! [`ImageGrid`]: 28x28 images with captions in one PNG; signed images (perturbations) in
//! blue and red.

use super::*;

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
            return Err(LabError::Shape {
                what: "a grid image".into(),
                expected: "784 values (28x28)".into(),
                got: image.dims().to_vec(),
            });
        }
        self.cells.push(Cell { pixels, caption: caption.into(), shade, highlight });
        Ok(self)
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
        let (pad, caption_h, title_h, legend_h) =
            (8u32, 22u32, if self.title.is_empty() { 0 } else { 30 }, if legend { 26 } else { 0 });
        let cols = self.columns.min(self.cells.len()).max(1) as u64;
        let rows = self.cells.len().div_ceil(self.columns).max(1) as u64;
        let cell_w = (side + pad).max(150) as u64;
        // Wide enough for the title and the legend too (a one-image grid is narrower than its title).
        let text_w = |text: &str, size: u32| {
            ("sans-serif", size).into_font().box_size(text).map(|(w, _)| w).unwrap_or(10 * text.chars().count() as u32)
                as u64
        };
        let min_w =
            text_w(&self.title, 18).max(if legend { text_w(SIGNED_LEGEND, 13) + 150 } else { 0 }) + 2 * pad as u64;
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
                area.draw_text(&self.title, &("sans-serif", 18).into_font().color(&BLACK), (pad as i32, 6))
                    .map_err(draw_err)?;
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
                    area.draw(&Rectangle::new(
                        [(px as i32, py as i32), ((px + self.scale) as i32, (py + self.scale) as i32)],
                        color.filled(),
                    ))
                    .map_err(draw_err)?;
                }
                let color = if cell.highlight { RGBColor(200, 0, 0) } else { BLACK };
                let style = ("sans-serif", 14).into_font().color(&color).pos(Pos::new(HPos::Center, VPos::Top));
                let cx = (pad + c * cell_w + (cell_w - pad) / 2) as i32;
                area.draw_text(&cell.caption, &style, (cx, (y0 + side + 3) as i32)).map_err(draw_err)?;
            }
            area.present().map_err(draw_err)?;
        }
        let img = image::RgbImage::from_raw(w, h, rgb)
            .ok_or_else(|| LabError::Other("image buffer has the wrong size".into()))?;
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
    pub(super) fn png_base64(&self) -> Result<String> {
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

pub(crate) fn too_many_images(n: usize) -> LabError {
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
            if t >= 0.0 {
                RGBColor(255, fade(t), fade(t))
            } else {
                RGBColor(fade(t), fade(t), 255)
            }
        }
    }
}
