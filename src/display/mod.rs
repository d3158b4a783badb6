//! The station's status view, drawn with embedded-graphics onto any `DrawTarget`.
//!
//! On the host it goes into [`MemoryFramebuffer`], which can be saved as a PNG snapshot; panel
//! and framebuffer back-ends implement the same trait. Text is formatted into fixed-capacity
//! strings, so redrawing allocates nothing.

use core::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use embedded_graphics::mono_font::ascii::{FONT_10X20, FONT_6X10};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::{Rgb888, RgbColor};
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

use crate::decision::Verdict;
use crate::telemetry::Counters;

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
}

const GREEN: Rgb888 = Rgb888::new(20, 140, 60);
const RED: Rgb888 = Rgb888::new(200, 30, 30);
const AMBER: Rgb888 = Rgb888::new(220, 140, 0);
const GREY: Rgb888 = Rgb888::new(60, 60, 60);

/// Draws the status view, scaled to the target's size (designed for 320x240 and up).
pub fn draw_status<D: DrawTarget<Color = Rgb888>>(target: &mut D, s: &Status<'_>) -> Result<(), D::Error> {
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
    Text::with_alignment(s.verdict.label(), Point::new(w as i32 / 2, panel_h as i32 / 2 + 6), big, Alignment::Center)
        .draw(target)?;
    let _ = write!(line, "part #{}", s.seq);
    Text::with_alignment(&line, Point::new(w as i32 / 2, panel_h as i32 - 8), small, Alignment::Center).draw(target)?;
    if let Verdict::Fault(f) = s.verdict {
        line.clear();
        let _ = write!(line, "FAULT: {f}");
        Text::new(&line, Point::new(4, 12), small).draw(target)?;
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
        };
        draw_status(&mut fb, &s).unwrap();
        assert_eq!(px(&fb, 2, 60), [20, 140, 60]);
        // Bar filled a quarter of the way (score = threshold / 2), grey beyond.
        assert_eq!(px(&fb, 20, 135), [20, 140, 60]);
        assert_eq!(px(&fb, 250, 135), [60, 60, 60]);
        s.verdict = Verdict::Defect;
        s.score = Some(1.5);
        draw_status(&mut fb, &s).unwrap();
        assert_eq!(px(&fb, 2, 60), [200, 30, 30]);
        // Three quarters of the bar (x < 8 + 228) at 1.5 x threshold.
        assert_eq!(px(&fb, 230, 135), [200, 30, 30]);
        assert_eq!(px(&fb, 240, 135), [60, 60, 60]);
        s.verdict = Verdict::Fault(Fault::Late);
        s.score = None;
        draw_status(&mut fb, &s).unwrap();
        assert_eq!(px(&fb, 2, 60), [220, 140, 0]);
        assert_eq!(px(&fb, 20, 135), [60, 60, 60]);
    }
}
