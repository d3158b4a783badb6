//! The built-in synthetic conveyor: machined brackets on a moving belt, some with defects.
//!
//! It serves two purposes with one piece of code, so that they cannot drift apart: the training
//! and test set of the bundled demo model (`anovit synth`, written in MVTec layout), and the frame
//! source of the built-in demo (`anovit run` with no arguments). Every frame is a pure function of
//! `(seed, index)`: the same frame comes out on every machine and every run, and rendering writes
//! into caller-owned buffers so the demo loop allocates nothing.
//!
//! What varies between good parts: position along and across the belt, a small rotation, global
//! lighting gain and a lighting gradient, the belt texture (it moves), and sensor noise. Defects
//! are drawn on the part and come with a pixel mask.

use std::fmt;

/// Kind of defect drawn on a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Defect {
    /// A thin straight line, darker or brighter than the metal.
    Scratch,
    /// An extra hole through the part: the belt shows through.
    Hole,
    /// A brownish, soft-edged stain.
    Stain,
    /// A chunk broken off the part's edge.
    Missing,
}

impl Defect {
    /// Every defect kind, in a fixed order.
    pub const ALL: [Defect; 4] = [Defect::Scratch, Defect::Hole, Defect::Stain, Defect::Missing];

    /// Folder name used in MVTec layout.
    pub fn name(self) -> &'static str {
        match self {
            Defect::Scratch => "scratch",
            Defect::Hole => "hole",
            Defect::Stain => "stain",
            Defect::Missing => "missing",
        }
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// SplitMix64: tiny, fast, and fully determined by its seed on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for one stream, derived from a seed and a stream number.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    /// Standard normal (Box-Muller; one value per call keeps the stream simple).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// What one synthetic part is: its ground truth.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PartSpec {
    /// Frame index the part was drawn for.
    pub index: u64,
    /// The defect on it, if any.
    pub defect: Option<Defect>,
}

/// Geometry of the part in its own coordinates (pixels, origin at its centre).
const PART_HALF_W: f32 = 78.0;
const PART_HALF_H: f32 = 54.0;
const PART_CORNER: f32 = 16.0;
const MOUNT_HOLES: [(f32, f32); 2] = [(-52.0, 0.0), (52.0, 0.0)];
const MOUNT_RADIUS: f32 = 11.0;
/// The painted band across the part.
const BAND_HALF_W: f32 = 10.0;

const BELT: [f32; 3] = [58.0, 61.0, 66.0];
const METAL: [f32; 3] = [176.0, 180.0, 186.0];
const PAINT: [f32; 3] = [40.0, 96.0, 170.0];

/// A defect placed on a part, in part coordinates.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Segment from (x0, y0) to (x1, y1), half width, additive brightness.
    Line { x0: f32, y0: f32, x1: f32, y1: f32, half_w: f32, delta: f32 },
    /// Disc through the part.
    Disc { cx: f32, cy: f32, r: f32 },
    /// Soft ellipse multiplying the colour.
    Blob { cx: f32, cy: f32, rx: f32, ry: f32, tint: [f32; 3] },
    /// Disc cut out of the part (centre near the edge).
    Cut { cx: f32, cy: f32, r: f32 },
}

/// Everything random about one frame, drawn up front from the frame's own stream.
struct Scene {
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
    gain: f32,
    grad_x: f32,
    grad_y: f32,
    belt_phase: f32,
    noise_sigma: f32,
    shape: Option<Shape>,
    rng: Rng,
}

/// Generator of conveyor frames of a fixed size.
#[derive(Clone, Debug)]
pub struct SynthConveyor {
    seed: u64,
    width: usize,
    height: usize,
    defect_rate: f32,
}

impl SynthConveyor {
    /// Default frame size (square, like a camera ROI around the part).
    pub const DEFAULT_SIZE: usize = 256;

    /// A generator; `defect_rate` is the share of parts that carry a defect in [`Self::spec`].
    pub fn new(seed: u64, width: usize, height: usize, defect_rate: f32) -> Self {
        Self { seed, width, height, defect_rate: defect_rate.clamp(0.0, 1.0) }
    }

    /// Frame width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Frame height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The ground truth of frame `index` on a line with this generator's defect rate.
    pub fn spec(&self, index: u64) -> PartSpec {
        let mut r = Rng::new(self.seed, index.wrapping_mul(2).wrapping_add(1));
        let defect = if r.unit() < self.defect_rate { Some(Defect::ALL[(r.next_u64() % 4) as usize]) } else { None };
        PartSpec { index, defect }
    }

    fn scene(&self, spec: PartSpec) -> Scene {
        let mut rng = Rng::new(self.seed, spec.index.wrapping_mul(2));
        let angle = rng.range(-2.0, 2.0).to_radians();
        let scale = self.width.min(self.height) as f32 / Self::DEFAULT_SIZE as f32;
        let cx = self.width as f32 * 0.5 + rng.range(-8.0, 8.0) * scale;
        let cy = self.height as f32 * 0.5 + rng.range(-5.0, 5.0) * scale;
        let gain = rng.range(0.95, 1.05);
        let grad_x = rng.range(-0.06, 0.06);
        let grad_y = rng.range(-0.04, 0.04);
        let belt_phase = rng.range(0.0, 64.0);
        let noise_sigma = rng.range(1.5, 3.5);
        let shape = spec.defect.map(|d| Self::defect_shape(d, &mut rng));
        Scene { cx, cy, cos: angle.cos(), sin: angle.sin(), gain, grad_x, grad_y, belt_phase, noise_sigma, shape, rng }
    }

    fn defect_shape(d: Defect, rng: &mut Rng) -> Shape {
        // Defects sit on the metal, away from the mounting holes where they would vanish.
        let on_part = |rng: &mut Rng| loop {
            let x = rng.range(-PART_HALF_W + 14.0, PART_HALF_W - 14.0);
            let y = rng.range(-PART_HALF_H + 12.0, PART_HALF_H - 12.0);
            let clear =
                MOUNT_HOLES.iter().all(|&(hx, hy)| ((x - hx).powi(2) + (y - hy).powi(2)).sqrt() > MOUNT_RADIUS + 14.0);
            if clear {
                return (x, y);
            }
        };
        match d {
            Defect::Scratch => {
                let (x, y) = on_part(rng);
                let len = rng.range(28.0, 64.0);
                let a = rng.range(0.0, std::f32::consts::PI);
                let (dx, dy) = (a.cos() * len * 0.5, a.sin() * len * 0.5);
                let delta = if rng.unit() < 0.5 { rng.range(-110.0, -70.0) } else { rng.range(60.0, 80.0) };
                Shape::Line { x0: x - dx, y0: y - dy, x1: x + dx, y1: y + dy, half_w: rng.range(1.5, 2.5), delta }
            }
            Defect::Hole => {
                let (cx, cy) = on_part(rng);
                Shape::Disc { cx, cy, r: rng.range(5.0, 10.0) }
            }
            Defect::Stain => {
                let (cx, cy) = on_part(rng);
                let k = rng.range(0.45, 0.7);
                Shape::Blob {
                    cx,
                    cy,
                    rx: rng.range(9.0, 18.0),
                    ry: rng.range(7.0, 14.0),
                    tint: [k + 0.1, k * 0.8, k * 0.55],
                }
            }
            Defect::Missing => {
                // A bite out of one of the four edges.
                let side = rng.next_u64() % 4;
                let t = rng.range(-0.6, 0.6);
                let (cx, cy) = match side {
                    0 => (t * PART_HALF_W, -PART_HALF_H),
                    1 => (t * PART_HALF_W, PART_HALF_H),
                    2 => (-PART_HALF_W, t * PART_HALF_H),
                    _ => (PART_HALF_W, t * PART_HALF_H),
                };
                Shape::Cut { cx, cy, r: rng.range(13.0, 24.0) }
            }
        }
    }

    /// Renders frame `spec` as interleaved RGB8 into `rgb` (`width * height * 3` bytes) and its
    /// defect mask (255 where defective) into `mask` (`width * height` bytes). Allocates nothing.
    ///
    /// # Panics
    /// If a buffer has the wrong length: a programming error, not an input error.
    pub fn render(&self, spec: PartSpec, rgb: &mut [u8], mask: &mut [u8]) {
        let (w, h) = (self.width, self.height);
        assert_eq!(rgb.len(), w * h * 3, "rgb buffer size");
        assert_eq!(mask.len(), w * h, "mask buffer size");
        let mut s = self.scene(spec);
        let scale = Self::DEFAULT_SIZE as f32 / w.min(h) as f32;
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                // Part coordinates in units of the 256 px reference frame.
                let (dx, dy) = ((px - s.cx) * scale, (py - s.cy) * scale);
                let u = s.cos * dx + s.sin * dy;
                let v = -s.sin * dx + s.cos * dy;
                let (color, defective) = shade(&s, u, v, (py * scale + s.belt_phase, px * scale));
                let light =
                    s.gain * (1.0 + s.grad_x * (px / w as f32 - 0.5) * 2.0 + s.grad_y * (py / h as f32 - 0.5) * 2.0);
                let o = (y * w + x) * 3;
                for c in 0..3 {
                    let val = color[c] * light + s.noise_sigma * s.rng.normal();
                    rgb[o + c] = val.round().clamp(0.0, 255.0) as u8;
                }
                mask[y * w + x] = if defective { 255 } else { 0 };
            }
        }
    }
}

/// Belt colour at belt coordinates: faint ribs across the belt that move with it, plus weave.
fn belt(along: f32, across: f32) -> [f32; 3] {
    let rib = (along * std::f32::consts::TAU / 16.0).sin() * 4.0;
    let weave = ((along * 0.9).sin() * (across * 1.3).sin()) * 2.0;
    [BELT[0] + rib + weave, BELT[1] + rib + weave, BELT[2] + rib + weave]
}

/// Signed distance to a rounded rectangle centred at the origin (negative inside).
fn rounded_rect_sd(u: f32, v: f32) -> f32 {
    let qx = u.abs() - (PART_HALF_W - PART_CORNER);
    let qy = v.abs() - (PART_HALF_H - PART_CORNER);
    let outside = (qx.max(0.0).powi(2) + qy.max(0.0).powi(2)).sqrt();
    outside + qx.max(qy).min(0.0) - PART_CORNER
}

/// Coverage in [0, 1] from a signed distance: one pixel of anti-aliasing.
fn coverage(sd: f32) -> f32 {
    (0.5 - sd).clamp(0.0, 1.0)
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// Colour of one pixel and whether a defect changed it.
fn shade(s: &Scene, u: f32, v: f32, belt_at: (f32, f32)) -> ([f32; 3], bool) {
    let bg = belt(belt_at.0, belt_at.1);
    // Metal: brushed (faint streaks along u), darker bevel near the edge, painted band.
    let sd = rounded_rect_sd(u, v);
    let brushed = ((v * 2.1).sin() * 0.5 + (v * 0.37 + u * 0.02).sin() * 0.5) * 3.0;
    let bevel = ((sd + 4.0).clamp(0.0, 4.0) / 4.0) * -28.0;
    let mut metal = [METAL[0] + brushed + bevel, METAL[1] + brushed + bevel, METAL[2] + brushed + bevel];
    let band = coverage(u.abs() - BAND_HALF_W);
    metal = mix(metal, PAINT, band);
    let mut part = coverage(sd);
    for &(hx, hy) in &MOUNT_HOLES {
        let d = ((u - hx).powi(2) + (v - hy).powi(2)).sqrt() - MOUNT_RADIUS;
        part *= 1.0 - coverage(d);
    }
    let mut defective = false;
    if let Some(shape) = s.shape {
        match shape {
            Shape::Line { x0, y0, x1, y1, half_w, delta } => {
                let (ex, ey) = (x1 - x0, y1 - y0);
                let t = (((u - x0) * ex + (v - y0) * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
                let d = ((u - x0 - t * ex).powi(2) + (v - y0 - t * ey).powi(2)).sqrt() - half_w;
                let k = coverage(d) * part;
                if k > 0.0 {
                    metal = [metal[0] + delta * k, metal[1] + delta * k, metal[2] + delta * k];
                    defective = k > 0.25;
                }
            }
            Shape::Disc { cx, cy, r } => {
                let d = ((u - cx).powi(2) + (v - cy).powi(2)).sqrt() - r;
                let k = coverage(d);
                defective = k > 0.25 && part > 0.25;
                part *= 1.0 - k;
            }
            Shape::Blob { cx, cy, rx, ry, tint } => {
                let q = ((u - cx) / rx).powi(2) + ((v - cy) / ry).powi(2);
                let k = (1.0 - q).clamp(0.0, 1.0).sqrt() * part;
                if k > 0.0 {
                    metal = mix(metal, [metal[0] * tint[0], metal[1] * tint[1], metal[2] * tint[2]], k);
                    defective = k > 0.2;
                }
            }
            Shape::Cut { cx, cy, r } => {
                let d = ((u - cx).powi(2) + (v - cy).powi(2)).sqrt() - r;
                let k = coverage(d);
                defective = k > 0.25 && part > 0.25;
                part *= 1.0 - k;
            }
        }
    }
    (mix(bg, metal, part), defective)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(g: &SynthConveyor, spec: PartSpec) -> (Vec<u8>, Vec<u8>) {
        let mut rgb = vec![0; g.width() * g.height() * 3];
        let mut mask = vec![0; g.width() * g.height()];
        g.render(spec, &mut rgb, &mut mask);
        (rgb, mask)
    }

    #[test]
    fn frames_are_deterministic_and_vary() {
        let g = SynthConveyor::new(7, 128, 96, 0.5);
        let a = frame(&g, g.spec(3));
        let b = frame(&g, g.spec(3));
        let c = frame(&g, g.spec(4));
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn good_parts_have_empty_masks_and_defects_do_not() {
        let g = SynthConveyor::new(1, 256, 256, 0.5);
        for d in Defect::ALL {
            for i in 0..5 {
                let (_, mask) = frame(&g, PartSpec { index: i, defect: Some(d) });
                let n = mask.iter().filter(|&&m| m > 0).count();
                assert!(n >= 20, "{d} on frame {i} marks only {n} pixels");
            }
        }
        let (_, mask) = frame(&g, PartSpec { index: 0, defect: None });
        assert!(mask.iter().all(|&m| m == 0));
    }

    #[test]
    fn defect_rate_is_respected() {
        let g = SynthConveyor::new(3, 64, 64, 0.25);
        let n = (0..4000).filter(|&i| g.spec(i).defect.is_some()).count();
        assert!((800..1200).contains(&n), "{n} defects in 4000");
    }
}
