//! The station's status view, drawn with embedded-graphics onto any `DrawTarget`.
//!
//! On the host it goes into [`MemoryFramebuffer`], which can be saved as a PNG snapshot; panel
//! and framebuffer back-ends implement the same trait. Text is formatted into fixed-capacity
//! strings, so redrawing allocates nothing.

use core::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_6X10};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::PointsIter;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};
use u8g2_fonts::{fonts, U8g2TextStyle};

use crate::decision::Verdict;
use crate::telemetry::{Counters, Health};

pub mod fbdev;
#[cfg(feature = "hw-i2c")]
pub mod oled;

/// What the screen shows after a frame.
#[derive(Clone, Copy, Debug)]
pub struct Status<'a> {
    /// Sequence number of the last part.
    pub seq: u64,
    /// Its verdict.
    pub verdict: Verdict,
    /// Its score, if one was computed.
    pub score: Option<f32>,
    /// The decision threshold.
    pub threshold: f32,
    /// Counters so far.
    pub counters: &'a Counters,
    /// Recent frames per second.
    pub fps: f32,
    /// Recent p99 frame latency.
    pub p99: Duration,
    /// Camera, alarm and late results.
    pub health: Health,
    /// Anomaly map of the last part rejected on its score.
    pub heatmap: Option<&'a Heatmap>,
}

/// Which screen design to draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Colour screens of 240x160 and up (HDMI, DSI, SPI TFTs).
    #[default]
    Colour,
    /// Small monochrome panels (128x64 OLEDs): black and white only.
    Mono,
}

const GREEN: Rgb888 = Rgb888::new(20, 140, 60);
const RED: Rgb888 = Rgb888::new(200, 30, 30);
const AMBER: Rgb888 = Rgb888::new(220, 140, 0);
const GREY: Rgb888 = Rgb888::new(60, 60, 60);

/// The most urgent condition to show across the top of the screen, if any.
fn banner(s: &Status<'_>) -> Option<&'static str> {
    if s.health.alarm {
        Some("ALARM: line must stop")
    } else if !s.health.camera_ok {
        Some("CAMERA LOST")
    } else if s.health.late {
        Some("LATE RESULTS")
    } else {
        None
    }
}

/// Draws the status view in `layout`, scaled to the target's size.
pub fn draw_status<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    s: &Status<'_>,
    layout: Layout,
) -> Result<(), D::Error> {
    match layout {
        Layout::Colour => draw_colour(target, s),
        Layout::Mono => draw_mono(target, s),
    }
}

/// The colour design (320x240 and up): verdict panel with the last reject's heatmap, score bar
/// against the threshold, counters, and a banner for camera loss, late results and the alarm.
fn draw_colour<D: DrawTarget<Color = Rgb888>>(target: &mut D, s: &Status<'_>) -> Result<(), D::Error> {
    let size = target.bounding_box().size;
    let (w, h) = (size.width, size.height);
    target.clear(Rgb888::BLACK)?;
    let panel_h = h / 2;
    let colour = match s.verdict {
        Verdict::Pass => GREEN,
        Verdict::Defect => RED,
        Verdict::Fault(_) => AMBER,
    };
    Rectangle::new(Point::zero(), Size::new(w, panel_h)).into_styled(PrimitiveStyle::with_fill(colour)).draw(target)?;
    let big = MonoTextStyle::new(&FONT_10X20, Rgb888::WHITE);
    let small = MonoTextStyle::new(&FONT_6X10, Rgb888::WHITE);
    let mut line: heapless::String<64> = heapless::String::new();
    // With a heatmap on the right, the verdict is centred in what is left.
    let thumb = panel_h.saturating_sub(24).min(w / 3);
    let text_w = if s.heatmap.is_some() && thumb >= 24 { w - thumb - 8 } else { w };
    // As large as the panel allows: readable from across the line.
    let at = Point::new(text_w as i32 / 2, panel_h as i32 / 2 + panel_h as i32 / 6);
    let label = s.verdict.label();
    if panel_h >= 150 {
        Text::with_alignment(
            label,
            at,
            U8g2TextStyle::new(fonts::u8g2_font_logisoso58_tr, Rgb888::WHITE),
            Alignment::Center,
        )
        .draw(target)?;
    } else if panel_h >= 100 {
        Text::with_alignment(
            label,
            at,
            U8g2TextStyle::new(fonts::u8g2_font_logisoso42_tr, Rgb888::WHITE),
            Alignment::Center,
        )
        .draw(target)?;
    } else {
        Text::with_alignment(label, Point::new(at.x, panel_h as i32 / 2 + 6), big, Alignment::Center).draw(target)?;
    }
    let _ = write!(line, "part #{}", s.seq);
    Text::with_alignment(&line, Point::new(text_w as i32 / 2, panel_h as i32 - 8), small, Alignment::Center)
        .draw(target)?;
    if let Some(map) = s.heatmap.filter(|_| thumb >= 24) {
        let origin = Point::new((w - thumb - 6) as i32, 16);
        map.draw(target, origin, thumb)?;
        line.clear();
        let _ = write!(line, "NG #{}", map.part);
        Text::new(&line, origin + Point::new(0, -4), small).draw(target)?;
    }
    if let Verdict::Fault(f) = s.verdict {
        line.clear();
        let _ = write!(line, "FAULT: {f}");
        Text::new(&line, Point::new(4, panel_h as i32 - 20), small).draw(target)?;
    }
    if let Some(b) = banner(s) {
        let fill = if s.health.alarm { RED } else { AMBER };
        Rectangle::new(Point::zero(), Size::new(w, 13)).into_styled(PrimitiveStyle::with_fill(fill)).draw(target)?;
        Rectangle::new(Point::new(0, 12), Size::new(w, 1))
            .into_styled(PrimitiveStyle::with_fill(Rgb888::BLACK))
            .draw(target)?;
        Text::new(b, Point::new(4, 9), MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK)).draw(target)?;
    }
    // Score bar: full width = twice the threshold, threshold marked in the middle.
    let bar_y = panel_h as i32 + 8;
    let bar_w = w.saturating_sub(16);
    Rectangle::new(Point::new(8, bar_y), Size::new(bar_w, 14))
        .into_styled(PrimitiveStyle::with_fill(GREY))
        .draw(target)?;
    if let Some(score) = s.score.filter(|v| v.is_finite()) {
        let frac = (score / (2.0 * s.threshold)).clamp(0.0, 1.0);
        let fill = (bar_w as f32 * frac) as u32;
        let c = if score >= s.threshold { RED } else { GREEN };
        Rectangle::new(Point::new(8, bar_y), Size::new(fill, 14))
            .into_styled(PrimitiveStyle::with_fill(c))
            .draw(target)?;
    }
    Rectangle::new(Point::new(8 + bar_w as i32 / 2 - 1, bar_y - 3), Size::new(2, 20))
        .into_styled(PrimitiveStyle::with_fill(Rgb888::WHITE))
        .draw(target)?;
    let c = s.counters;
    let mut y = bar_y + 30;
    line.clear();
    match s.score.filter(|v| v.is_finite()) {
        Some(score) => {
            let _ = write!(line, "score {score:.5}  thr {:.5}", s.threshold);
        }
        None => {
            let _ = write!(line, "score --  thr {:.5}", s.threshold);
        }
    }
    Text::new(&line, Point::new(8, y), small).draw(target)?;
    y += 14;
    line.clear();
    let _ = write!(line, "OK {}  NG {}  FAULT {}", c.passed, c.defects, c.faults);
    Text::new(&line, Point::new(8, y), small).draw(target)?;
    y += 14;
    line.clear();
    let _ = write!(line, "{:.1} fps  p99 {} ms  late {}", s.fps, s.p99.as_millis(), c.late);
    Text::new(&line, Point::new(8, y), small).draw(target)?;
    Ok(())
}

/// The monochrome design (128x64): the verdict inverted in a box, the score bar with the
/// threshold tick, counters, and the banner (or the rate) on the last line.
fn draw_mono<D: DrawTarget<Color = Rgb888>>(target: &mut D, s: &Status<'_>) -> Result<(), D::Error> {
    let size = target.bounding_box().size;
    let w = size.width;
    let (on, off) = (Rgb888::WHITE, Rgb888::BLACK);
    target.clear(off)?;
    let big_inv = MonoTextStyle::new(&FONT_10X20, off);
    let small = MonoTextStyle::new(&FONT_6X10, on);
    let mut line: heapless::String<32> = heapless::String::new();
    let box_w = 58.min(w);
    Rectangle::new(Point::zero(), Size::new(box_w, 22)).into_styled(PrimitiveStyle::with_fill(on)).draw(target)?;
    Text::with_alignment(s.verdict.label(), Point::new(box_w as i32 / 2, 16), big_inv, Alignment::Center)
        .draw(target)?;
    let _ = write!(line, "#{}", s.seq);
    Text::new(&line, Point::new(box_w as i32 + 4, 9), small).draw(target)?;
    line.clear();
    match (s.verdict, s.score.filter(|v| v.is_finite())) {
        (Verdict::Fault(f), _) => {
            // Room for 8 characters beside the box.
            let code = f.code();
            let _ = write!(line, "{}", code.strip_prefix("capture_").unwrap_or(code));
        }
        (_, Some(score)) => {
            let _ = write!(line, "{score:.3}");
        }
        (_, None) => {}
    }
    Text::new(&line, Point::new(box_w as i32 + 4, 20), small).draw(target)?;
    // Score bar: outline, fill to the score (full = twice the threshold), tick at the threshold.
    let bar_w = w.saturating_sub(4);
    Rectangle::new(Point::new(2, 26), Size::new(bar_w, 8))
        .into_styled(PrimitiveStyle::with_stroke(on, 1))
        .draw(target)?;
    if let Some(score) = s.score.filter(|v| v.is_finite()) {
        let frac = (score / (2.0 * s.threshold)).clamp(0.0, 1.0);
        let fill = ((bar_w - 4) as f32 * frac) as u32;
        Rectangle::new(Point::new(4, 28), Size::new(fill, 4))
            .into_styled(PrimitiveStyle::with_fill(on))
            .draw(target)?;
    }
    Rectangle::new(Point::new(2 + bar_w as i32 / 2, 24), Size::new(1, 12))
        .into_styled(PrimitiveStyle::with_fill(on))
        .draw(target)?;
    let c = s.counters;
    line.clear();
    let _ = write!(line, "OK{} NG{} F{}", c.passed, c.defects, c.faults);
    Text::new(&line, Point::new(0, 46), small).draw(target)?;
    line.clear();
    match banner(s) {
        Some(b) => {
            // Inverted, so that it stands out on a one-colour panel.
            Rectangle::new(Point::new(0, 51), Size::new(w, 13))
                .into_styled(PrimitiveStyle::with_fill(on))
                .draw(target)?;
            let short = b.split(':').next().unwrap_or(b);
            Text::new(short, Point::new(2, 61), MonoTextStyle::new(&FONT_6X10, off)).draw(target)?;
        }
        None => {
            let _ = write!(line, "{:.1} fps p99 {}ms", s.fps, s.p99.as_millis());
            Text::new(&line, Point::new(0, 60), small).draw(target)?;
        }
    }
    Ok(())
}

/// A thumbnail of an anomaly map (max-pooled, scaled so that the threshold is full heat), kept
/// in a fixed buffer: updating it allocates nothing.
#[derive(Clone, Debug)]
pub struct Heatmap {
    side: usize,
    values: Vec<u8>,
    /// The part it belongs to.
    pub part: u64,
}

impl Heatmap {
    /// Side of the thumbnail in cells.
    pub const SIDE: usize = 48;

    /// An empty thumbnail.
    pub fn new() -> Self {
        Self { side: Self::SIDE, values: vec![0; Self::SIDE * Self::SIDE], part: 0 }
    }

    /// Takes `map` (`width x height`, row-major) of part `part`: each cell is the maximum of
    /// its pixels, 255 at or above `threshold`.
    pub fn update(&mut self, map: &[f32], width: usize, height: usize, threshold: f32, part: u64) {
        self.part = part;
        let n = self.side;
        for cy in 0..n {
            let (y0, y1) = (cy * height / n, ((cy + 1) * height / n).max(cy * height / n + 1).min(height));
            for cx in 0..n {
                let (x0, x1) = (cx * width / n, ((cx + 1) * width / n).max(cx * width / n + 1).min(width));
                let mut m = 0.0f32;
                for y in y0..y1 {
                    for &v in &map[y * width + x0..y * width + x1] {
                        m = m.max(v);
                    }
                }
                let t = if threshold > 0.0 { m / threshold } else { 0.0 };
                self.values[cy * n + cx] = (t.clamp(0.0, 1.0) * 255.0) as u8;
            }
        }
    }

    /// One cell's heat (0..=255).
    pub fn value(&self, x: usize, y: usize) -> u8 {
        self.values[y * self.side + x]
    }

    /// Draws it as a `side`-pixel square at `origin` (black, red, yellow, white with heat).
    fn draw<D: DrawTarget<Color = Rgb888>>(&self, target: &mut D, origin: Point, side: u32) -> Result<(), D::Error> {
        let n = self.side as u32;
        let area = Rectangle::new(origin, Size::new(side, side));
        let colours = area.points().map(|p| {
            let d = p - origin;
            let (cx, cy) = (d.x as u32 * n / side, d.y as u32 * n / side);
            Pixel(p, heat(self.values[(cy * n + cx) as usize]))
        });
        target.draw_iter(colours)
    }
}

impl Default for Heatmap {
    fn default() -> Self {
        Self::new()
    }
}

/// Black through red and yellow to white.
fn heat(v: u8) -> Rgb888 {
    let v = u32::from(v) * 3;
    let ch = |lo: u32| (v.saturating_sub(lo)).min(255) as u8;
    Rgb888::new(ch(0), ch(255), ch(510))
}

/// Whether an RGB8 pixel of the view is lit on a one-colour screen (brighter than mid-grey).
pub(crate) fn lit(px: &[u8]) -> bool {
    u32::from(px[0]) + u32::from(px[1]) + u32::from(px[2]) >= 384
}

/// A real screen the status view is shown on (after it is drawn in memory).
pub trait Panel: Send {
    /// Shows `fb` (the whole status view).
    fn show(&mut self, fb: &MemoryFramebuffer) -> Result<(), String>;
}

struct Handover {
    fb: MemoryFramebuffer,
    fresh: bool,
    stop: bool,
    error: Option<String>,
}

/// A slow panel (a bus that takes milliseconds per frame) on a thread of its own: the loop
/// leaves the latest view and goes on; the thread shows the newest one it finds, skipping any
/// it had no time for. Nothing is allocated per frame.
pub struct Threaded {
    shared: Arc<(Mutex<Handover>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Threaded {
    /// Starts showing views of `width` x `height` on `panel`.
    pub fn spawn(mut panel: Box<dyn Panel>, width: u32, height: u32) -> std::io::Result<Self> {
        let state = Handover { fb: MemoryFramebuffer::new(width, height), fresh: false, stop: false, error: None };
        let shared = Arc::new((Mutex::new(state), Condvar::new()));
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("anovit-panel".into()).spawn(move || {
            let mut mine = MemoryFramebuffer::new(width, height);
            loop {
                {
                    let mut g = s.0.lock().unwrap_or_else(PoisonError::into_inner);
                    while !g.fresh && !g.stop {
                        g = s.1.wait(g).unwrap_or_else(PoisonError::into_inner);
                    }
                    if g.stop {
                        return;
                    }
                    mine.pixels.copy_from_slice(&g.fb.pixels);
                    g.fresh = false;
                }
                if let Err(e) = panel.show(&mine) {
                    s.0.lock().unwrap_or_else(PoisonError::into_inner).error = Some(e);
                }
            }
        })?;
        Ok(Self { shared, thread: Some(thread) })
    }
}

impl Panel for Threaded {
    /// Leaves `fb` for the thread; an error the panel met since the last call is returned.
    fn show(&mut self, fb: &MemoryFramebuffer) -> Result<(), String> {
        let mut g = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
        if g.fb.pixels.len() == fb.pixels.len() {
            g.fb.pixels.copy_from_slice(&fb.pixels);
            g.fresh = true;
            self.shared.1.notify_one();
        }
        g.error.take().map_or(Ok(()), Err)
    }
}

impl Drop for Threaded {
    fn drop(&mut self) {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An RGB framebuffer in memory: the host display, and the source of PNG snapshots.
#[derive(Clone, Debug)]
pub struct MemoryFramebuffer {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl MemoryFramebuffer {
    /// A black `width x height` framebuffer.
    pub fn new(width: u32, height: u32) -> Self {
        Self { width, height, pixels: vec![0; (width * height * 3) as usize] }
    }

    /// RGB8 bytes, row-major.
    pub fn rgb(&self) -> &[u8] {
        &self.pixels
    }

    /// Writes the screen as a PNG file.
    pub fn save_png(&self, path: &Path) -> Result<(), image::ImageError> {
        image::save_buffer(path, &self.pixels, self.width, self.height, image::ExtendedColorType::Rgb8)
    }
}

impl OriginDimensions for MemoryFramebuffer {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for MemoryFramebuffer {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                let o = ((p.y as u32 * self.width + p.x as u32) * 3) as usize;
                self.pixels[o..o + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Fault;

    fn px(fb: &MemoryFramebuffer, x: u32, y: u32) -> [u8; 3] {
        let o = ((y * 320 + x) * 3) as usize;
        [fb.rgb()[o], fb.rgb()[o + 1], fb.rgb()[o + 2]]
    }

    /// A panel that takes 10 ms per frame and remembers the first byte of each.
    struct Slow(Arc<Mutex<Vec<u8>>>, bool);

    impl Panel for Slow {
        fn show(&mut self, fb: &MemoryFramebuffer) -> Result<(), String> {
            std::thread::sleep(Duration::from_millis(10));
            self.0.lock().unwrap().push(fb.rgb()[0]);
            if self.1 {
                return Err("bus gone".into());
            }
            Ok(())
        }
    }

    #[test]
    fn a_slow_panel_on_its_thread_shows_the_newest_view_and_reports_its_errors() {
        let shown = Arc::new(Mutex::new(Vec::new()));
        let mut t = Threaded::spawn(Box::new(Slow(shown.clone(), false)), 4, 4).unwrap();
        let mut fb = MemoryFramebuffer::new(4, 4);
        for v in 1..=50u8 {
            fb.pixels[0] = v;
            t.show(&fb).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        drop(t);
        let s = shown.lock().unwrap();
        assert_eq!(s.last(), Some(&50), "the newest view is shown: {s:?}");
        assert!(s.len() < 50 && s.windows(2).all(|w| w[0] < w[1]), "older views skipped, in order: {s:?}");
        let mut t = Threaded::spawn(Box::new(Slow(Arc::default(), true)), 4, 4).unwrap();
        assert!(t.show(&fb).is_ok());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(t.show(&fb), Err("bus gone".to_string()), "the panel's error comes back to the loop");
    }

    #[test]
    fn panel_colour_follows_the_verdict_and_bar_follows_the_score() {
        let c = Counters::default();
        let mut fb = MemoryFramebuffer::new(320, 240);
        let mut s = Status {
            seq: 1,
            verdict: Verdict::Pass,
            score: Some(0.5),
            threshold: 1.0,
            counters: &c,
            fps: 0.0,
            p99: Duration::ZERO,
            health: Health { camera_ok: true, alarm: false, late: false },
            heatmap: None,
        };
        draw_status(&mut fb, &s, Layout::Colour).unwrap();
        assert_eq!(px(&fb, 2, 60), [20, 140, 60]);
        // Bar filled a quarter of the way (score = threshold / 2), grey beyond.
        assert_eq!(px(&fb, 20, 135), [20, 140, 60]);
        assert_eq!(px(&fb, 250, 135), [60, 60, 60]);
        s.verdict = Verdict::Defect;
        s.score = Some(1.5);
        draw_status(&mut fb, &s, Layout::Colour).unwrap();
        assert_eq!(px(&fb, 2, 60), [200, 30, 30]);
        // Three quarters of the bar (x < 8 + 228) at 1.5 x threshold.
        assert_eq!(px(&fb, 230, 135), [200, 30, 30]);
        assert_eq!(px(&fb, 240, 135), [60, 60, 60]);
        s.verdict = Verdict::Fault(Fault::Late);
        s.score = None;
        draw_status(&mut fb, &s, Layout::Colour).unwrap();
        assert_eq!(px(&fb, 2, 60), [220, 140, 0]);
        assert_eq!(px(&fb, 20, 135), [60, 60, 60]);
    }
}
