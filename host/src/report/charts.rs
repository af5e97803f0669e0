//! Line charts and heatmaps on a [`Canvas`].

use super::canvas::{BLACK, Canvas, GREY, PALETTE, heat};

/// One named series of `(x, y)` points; `dots` draws markers instead of a line.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

const MARGIN_LEFT: i64 = 80;
const MARGIN_RIGHT: i64 = 200;
const MARGIN_TOP: i64 = 40;
const MARGIN_BOTTOM: i64 = 50;

/// A line chart with a title, axis ranges labelled, a legend on the right, and vertical
/// markers (e.g. stage starts) at `(x, label)`.
pub fn line_chart(title: &str, x_label: &str, series: &[Series], markers: &[(f64, String)]) -> Canvas {
    let (w, h) = (900i64, 500i64);
    let mut c = Canvas::new(w as usize, h as usize);
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = (w - MARGIN_LEFT - MARGIN_RIGHT, h - MARGIN_TOP - MARGIN_BOTTOM);
    let map = |x: f64, y: f64| (MARGIN_LEFT as f64 + (x - x0) / (x1 - x0) * pw as f64, MARGIN_TOP as f64 + (1.0 - (y - y0) / (y1 - y0)) * ph as f64);

    c.text(MARGIN_LEFT, 12, title, BLACK, 2);
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let (_, py) = map(x0, y);
        c.line((MARGIN_LEFT as f64, py), ((MARGIN_LEFT + pw) as f64, py), GREY, 1);
        let label = format!("{y:.2}");
        c.text(MARGIN_LEFT - 8 - Canvas::text_width(&label, 1), py as i64 - 3, &label, BLACK, 1);
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let (px, _) = map(x, y0);
        let label = format!("{x:.0}");
        c.text(px as i64 - Canvas::text_width(&label, 1) / 2, MARGIN_TOP + ph + 8, &label, BLACK, 1);
    }
    c.line((MARGIN_LEFT as f64, MARGIN_TOP as f64), (MARGIN_LEFT as f64, (MARGIN_TOP + ph) as f64), BLACK, 1);
    c.line((MARGIN_LEFT as f64, (MARGIN_TOP + ph) as f64), ((MARGIN_LEFT + pw) as f64, (MARGIN_TOP + ph) as f64), BLACK, 1);
    c.text(MARGIN_LEFT + pw / 2 - Canvas::text_width(x_label, 2) / 2, h - 22, x_label, BLACK, 2);

    for (x, label) in markers {
        let (px, _) = map(*x, y0);
        for y in (MARGIN_TOP..MARGIN_TOP + ph).step_by(6) {
            c.fill_rect(px as i64, y, 1, 3, BLACK);
        }
        c.text(px as i64 + 3, MARGIN_TOP + 2, label, BLACK, 1);
    }
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let mut prev: Option<(f64, f64)> = None;
        for &(x, y) in s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()) {
            let p = map(x, y);
            if s.dots {
                c.fill_rect(p.0 as i64 - 3, p.1 as i64 - 3, 7, 7, colour);
            } else if let Some(q) = prev {
                c.line(q, p, colour, 2);
            }
            prev = Some(p);
        }
        let ly = MARGIN_TOP + 10 + i as i64 * 22;
        let lx = w - MARGIN_RIGHT + 16;
        if s.dots {
            c.fill_rect(lx + 6, ly - 1, 7, 7, colour);
        } else {
            c.line((lx as f64, (ly + 3) as f64), ((lx + 18) as f64, (ly + 3) as f64), colour, 3);
        }
        c.text(lx + 26, ly, &s.name, BLACK, 1);
    }
    c
}

/// Heatmaps stacked vertically, one per row group (e.g. per layer): `values[g][row][col]`
/// in 0..=1, each group labelled, columns spanning `x_range`.
pub fn heatmaps(title: &str, groups: &[(String, Vec<Vec<f64>>)], x_range: (f64, f64)) -> Canvas {
    let cell_h = 14i64;
    let gap = 24i64;
    let w = 900i64;
    let rows: i64 = groups.iter().map(|(_, g)| g.len() as i64).sum();
    let h = MARGIN_TOP + rows * cell_h + groups.len() as i64 * gap + MARGIN_BOTTOM;
    let mut c = Canvas::new(w as usize, h as usize);
    c.text(MARGIN_LEFT, 12, title, BLACK, 2);
    let pw = w - MARGIN_LEFT - MARGIN_RIGHT;
    let mut y = MARGIN_TOP + gap;
    for (name, grid) in groups {
        c.text(8, y - 16, name, BLACK, 1);
        for (r, row) in grid.iter().enumerate() {
            c.text(MARGIN_LEFT - 30, y + 3, &format!("E{r}"), BLACK, 1);
            let n = row.len().max(1) as i64;
            for (i, &v) in row.iter().enumerate() {
                let x = MARGIN_LEFT + i as i64 * pw / n;
                let x_end = MARGIN_LEFT + (i as i64 + 1) * pw / n;
                c.fill_rect(x, y, (x_end - x).max(1), cell_h, heat(v));
            }
            y += cell_h;
        }
        y += gap;
    }
    let base = y - gap + 6;
    for (i, x) in [x_range.0, (x_range.0 + x_range.1) / 2.0, x_range.1].iter().enumerate() {
        let label = format!("{x:.0}");
        let px = MARGIN_LEFT + pw * i as i64 / 2 - Canvas::text_width(&label, 1) / 2;
        c.text(px, base, &label, BLACK, 1);
    }
    // Colour scale.
    let lx = w - MARGIN_RIGHT + 20;
    for i in 0..100 {
        c.fill_rect(lx, MARGIN_TOP + gap + 100 - i, 16, 1, heat(i as f64 / 100.0));
    }
    c.text(lx + 22, MARGIN_TOP + gap, "2x even share", BLACK, 1);
    c.text(lx + 22, MARGIN_TOP + gap + 94, "0", BLACK, 1);
    c
}
