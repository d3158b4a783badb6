//! What the set-up page shows, taken from the frame loop: the camera's frame (scaled down), the
//! ROI, the last anomaly map, counters and recent rejects; and the threshold the page asks for.
//!
//! The loop never waits here: it takes the lock with `try_lock` and skips when the page is
//! reading, copies a frame only while someone watches (a request in the last few seconds) and at
//! most five times a second, into buffers sized once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::capture::convert::yuyv_to_rgb;
use crate::capture::{Frame, PixelFormat};
use crate::decision::Verdict;
use crate::telemetry::{Counters, Outcome};

/// Widest frame kept for the page, in pixels.
pub const MAX_WIDTH: usize = 320;
/// Rejects listed.
pub const RECENT: usize = 12;
/// Shortest time between two frames taken for the page.
const EVERY: Duration = Duration::from_millis(200);
/// How long after a request the page counts as watched.
const WATCHED: Duration = Duration::from_secs(5);

/// One recent reject.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Reject {
    /// Part.
    pub seq: u64,
    /// Score, when there was one.
    pub score: Option<f32>,
    /// `NG` or `FAULT`.
    pub verdict: &'static str,
    /// The fault's code.
    pub fault: Option<&'static str>,
    /// The frame's label.
    pub label: heapless::String<32>,
    /// Decision time on the loop's clock, microseconds.
    pub decided_us: u64,
}

/// A frame for the page, with what was found on its part.
#[derive(Debug)]
pub struct Picture {
    /// RGB8, `width x height` (0 x 0 before the first).
    pub rgb: Vec<u8>,
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// Source pixels per picture pixel.
    pub step: usize,
    /// ROI in source pixels `[x, y, w, h]`, the whole frame when none.
    pub roi: [u32; 4],
    /// The part: number, score, verdict (once decided).
    pub part: Option<(u64, Option<f32>, &'static str)>,
    /// Anomaly map of the part (model input size), empty when it was not scored.
    pub map: Vec<f32>,
    /// Map width.
    pub map_width: usize,
    /// Map height.
    pub map_height: usize,
    /// Threshold when it was decided.
    pub threshold: f32,
}

impl Picture {
    fn new(map_width: usize, map_height: usize) -> Self {
        Self {
            rgb: Vec::with_capacity(MAX_WIDTH * MAX_WIDTH * 3),
            width: 0,
            height: 0,
            step: 1,
            roi: [0; 4],
            part: None,
            map: Vec::with_capacity(map_width * map_height),
            map_width,
            map_height,
            threshold: 0.0,
        }
    }

    /// Copies `other` into this one's buffers.
    fn copy_from(&mut self, other: &Picture) {
        self.rgb.clear();
        self.rgb.extend_from_slice(&other.rgb);
        self.map.clear();
        self.map.extend_from_slice(&other.map);
        (self.width, self.height, self.step, self.roi, self.part) =
            (other.width, other.height, other.step, other.roi, other.part);
        (self.map_width, self.map_height, self.threshold) = (other.map_width, other.map_height, other.threshold);
    }
}

/// The state the page reads.
#[derive(Debug)]
pub struct View {
    /// The newest frame taken.
    pub live: Picture,
    /// The last part rejected on its score among the frames taken.
    pub reject: Picture,
    /// Last part: number, score, verdict.
    pub last: Option<(u64, Option<f32>, &'static str)>,
    /// Threshold in use.
    pub threshold: f32,
    /// Counters.
    pub counters: Counters,
    /// Frames per second.
    pub fps: f32,
    /// Newest first.
    pub recent: heapless::Deque<Reject, RECENT>,
}

/// Shared between the loop and the page.
#[derive(Debug)]
pub struct Scene {
    view: Mutex<View>,
    roi: Option<[u32; 4]>,
    started: Instant,
    /// Milliseconds since `started` of the last request.
    watched_at: AtomicU64,
    /// Milliseconds since `started` of the last frame taken (+1; 0: never).
    taken_at: AtomicU64,
    /// Threshold asked for (f32 bits), 0 when none.
    request: AtomicU32,
}

impl Scene {
    /// A scene for frames cut to `roi` (source pixels) and maps of `map_width x map_height`.
    pub fn new(roi: Option<[u32; 4]>, map_width: usize, map_height: usize, threshold: f32) -> Self {
        let view = View {
            live: Picture::new(map_width, map_height),
            reject: Picture::new(map_width, map_height),
            last: None,
            threshold,
            counters: Counters::default(),
            fps: 0.0,
            recent: heapless::Deque::new(),
        };
        Self {
            view: Mutex::new(view),
            roi,
            started: Instant::now(),
            watched_at: AtomicU64::new(0),
            taken_at: AtomicU64::new(0),
            request: AtomicU32::new(0),
        }
    }

    fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The page was asked for something: frames are taken for a while.
    pub fn watched(&self) {
        self.watched_at.store(self.ms() + 1, Ordering::Relaxed);
    }

    /// Reads the view (the page's side).
    pub fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        let v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        f(&v)
    }

    /// Asks the loop to use `threshold` from its next part.
    pub fn request_threshold(&self, threshold: f32) {
        self.request.store(threshold.to_bits(), Ordering::Relaxed);
    }

    /// The threshold asked for since the last call, if any (the loop's side).
    pub fn take_threshold(&self) -> Option<f32> {
        let bits = self.request.swap(0, Ordering::Relaxed);
        (bits != 0).then(|| f32::from_bits(bits))
    }

    /// Takes `frame` (part `part`) for the page when someone watches and it is time; returns
    /// whether it did, so that the part's map follows.
    pub fn offer_frame(&self, part: u64, frame: &Frame<'_>) -> bool {
        let now = self.ms();
        let watched = self.watched_at.load(Ordering::Relaxed);
        let taken = self.taken_at.load(Ordering::Relaxed);
        if watched == 0 || now + 1 > watched + WATCHED.as_millis() as u64 {
            return false;
        }
        if taken != 0 && now + 1 < taken + EVERY.as_millis() as u64 {
            return false;
        }
        let Ok(mut v) = self.view.try_lock() else { return false };
        let m = frame.meta;
        let bpp = m.format.bytes_per_pixel();
        if m.width == 0 || m.height == 0 || frame.data.len() != m.width * m.height * bpp {
            return false;
        }
        let step = m.width.div_ceil(MAX_WIDTH).max(m.height.div_ceil(MAX_WIDTH));
        let (w, h) = (m.width / step, m.height / step);
        let p = &mut v.live;
        p.rgb.clear();
        for y in 0..h {
            let row = &frame.data[y * step * m.width * bpp..][..m.width * bpp];
            for x in 0..w {
                let o = x * step * bpp;
                let px = match m.format {
                    PixelFormat::Rgb8 => [row[o], row[o + 1], row[o + 2]],
                    PixelFormat::Gray8 => [row[o]; 3],
                    PixelFormat::Yuyv => yuyv_to_rgb(row[o], row[(o & !3) + 1], row[(o & !3) + 3]),
                };
                p.rgb.extend_from_slice(&px);
            }
        }
        (p.width, p.height, p.step) = (w, h, step);
        p.roi = self.roi.unwrap_or([0, 0, m.width as u32, m.height as u32]);
        p.part = Some((part, None, "judging"));
        p.map.clear();
        self.taken_at.store(now + 1, Ordering::Relaxed);
        true
    }

    /// The part's outcome: counters, and its map when its frame was taken (`map` empty when it
    /// was not scored). Rejects are listed even while nobody watches.
    pub fn record(&self, o: &Outcome, map: Option<&[f32]>, threshold: f32, counters: &Counters, fps: f32) {
        let Ok(mut v) = self.view.try_lock() else { return };
        let v = &mut *v;
        if v.live.part.is_some_and(|(p, ..)| p == o.part) {
            v.live.part = Some((o.part, o.score.filter(|s| s.is_finite()), o.verdict.label()));
            v.live.threshold = threshold;
            if let Some(map) = map {
                v.live.map.clear();
                v.live.map.extend_from_slice(map);
            }
            if o.verdict == Verdict::Defect {
                v.reject.copy_from(&v.live);
            }
        }
        v.last = Some((o.part, o.score, o.verdict.label()));
        v.threshold = threshold;
        v.counters = *counters;
        v.fps = fps;
        if o.verdict.is_reject() {
            if v.recent.is_full() {
                v.recent.pop_back();
            }
            let fault = match o.verdict {
                Verdict::Fault(f) => Some(f.code()),
                _ => None,
            };
            let label = o.meta.as_ref().map(|m| m.label.clone()).unwrap_or_default();
            let r = Reject {
                seq: o.part,
                score: o.score.filter(|s| s.is_finite()),
                verdict: o.verdict.label(),
                fault,
                label,
                decided_us: o.decided_at.as_micros() as u64,
            };
            let _ = v.recent.push_front(r);
        }
    }
}

impl Picture {
    /// The frame with the ROI outlined and the anomaly map in heat colours inside it.
    pub fn composite(&self) -> Vec<u8> {
        let mut rgb = self.rgb.clone();
        let [rx, ry, rw, rh] = self.roi.map(|v| v as usize);
        let (s, w, h) = (self.step, self.width, self.height);
        let has_map = self.map.len() == self.map_width * self.map_height && !self.map.is_empty() && rw > 0 && rh > 0;
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = (x * s, y * s);
                let inside = sx >= rx && sx < rx + rw && sy >= ry && sy < ry + rh;
                if !inside {
                    continue;
                }
                let i = (y * w + x) * 3;
                let edge = sx < rx + s || sx + s >= rx + rw || sy < ry + s || sy + s >= ry + rh;
                let px = if edge {
                    [255, 200, 0]
                } else if has_map {
                    let (mx, my) = ((sx - rx) * self.map_width / rw, (sy - ry) * self.map_height / rh);
                    let px = [rgb[i], rgb[i + 1], rgb[i + 2]];
                    super::blend(px, self.map[my * self.map_width + mx], self.threshold)
                } else {
                    continue;
                };
                rgb[i..i + 3].copy_from_slice(&px);
            }
        }
        rgb
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::FrameMeta;
    use crate::telemetry::StageTimes;

    fn outcome(part: u64, verdict: Verdict, score: f32) -> Outcome {
        Outcome {
            part,
            meta: None,
            score: Some(score),
            verdict,
            times: StageTimes::default(),
            decided_at: Duration::ZERO,
        }
    }

    #[test]
    fn frames_are_taken_only_while_watched_and_carry_roi_and_map() {
        let scene = Scene::new(Some([100, 0, 400, 480]), 4, 4, 1.0);
        let data = vec![128u8; 640 * 480 * 3];
        let meta = FrameMeta::new(640, 480, PixelFormat::Rgb8);
        let frame = Frame { data: &data, meta: &meta };
        assert!(!scene.offer_frame(0, &frame), "nobody watches yet");
        scene.watched();
        assert!(scene.offer_frame(1, &frame));
        assert!(!scene.offer_frame(2, &frame), "at most five a second");
        // Hot map: the ROI's inside turns to heat, its edge is outlined, the outside untouched.
        scene.record(&outcome(1, Verdict::Defect, 2.0), Some(&[2.0; 16]), 1.0, &Counters::default(), 3.0);
        let rgb = scene.read(|v| {
            assert_eq!((v.live.width, v.live.height, v.live.step), (320, 240, 2));
            assert_eq!(v.recent.len(), 1);
            assert_eq!(v.reject.part, Some((1, Some(2.0), "NG")), "a defect's picture is kept");
            v.live.composite()
        });
        let px = |x: usize, y: usize| &rgb[(y * 320 + x) * 3..][..3];
        assert_eq!(px(10, 100), [128, 128, 128]);
        assert_eq!(px(50, 100), [255, 200, 0]);
        let hot = px(150, 120);
        assert!(hot[0] > 200 && hot[1] < 80 && hot[2] < 80, "red at and above the threshold: {hot:?}");
        // A later part's map does not land on this frame.
        scene.record(&outcome(2, Verdict::Pass, 0.0), Some(&[0.0; 16]), 1.0, &Counters::default(), 3.0);
        assert!(scene.read(|v| v.live.map.iter().all(|&m| m == 2.0)));
    }

    #[test]
    fn a_requested_threshold_is_taken_once() {
        let scene = Scene::new(None, 1, 1, 1.0);
        assert_eq!(scene.take_threshold(), None);
        scene.request_threshold(0.75);
        assert_eq!(scene.take_threshold(), Some(0.75));
        assert_eq!(scene.take_threshold(), None);
    }
}
