//! The figures' tests: what each draws, and the errors for what it cannot.

use super::*;
use crate::data::mnist;

#[test]
fn line_plot_svg_has_title_labels_and_legend() {
    let svg = LinePlot::new("Loss per step")
        .labels("step", "loss")
        .line("loss", [(0.0, 2.0), (1.0, 1.0), (2.0, 0.5)])
        .to_svg()
        .unwrap();
    for text in ["Loss per step", "step", "loss", "<polyline", "<svg"] {
        assert!(svg.contains(text), "missing {text}");
    }
    let with_legend = LinePlot::new("one").line("named", [(0.0, 1.0), (1.0, 0.0)]).to_svg().unwrap();
    let mixed = LinePlot::new("one")
        .line("named", [(0.0, 1.0), (1.0, 0.0)])
        .line("", [(0.0, 0.5), (1.0, 0.5)])
        .to_svg()
        .unwrap();
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
    let added = |named: LinePlot, unnamed: LinePlot, tag: &str| {
        count(named.to_svg().unwrap(), tag) - count(unnamed.to_svg().unwrap(), tag)
    };
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
    let (p, s) =
        (image::load_from_memory(&plain).unwrap().to_rgb8(), image::load_from_memory(&signed).unwrap().to_rgb8());
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
