//! Speed and memory figures behind `anovit bench` and `scripts/perf.py` (docs/PERF.md).
//!
//! Speed is measured here and printed, never asserted in tests (the machines are shared and
//! noisy). What the figures need that the loop itself does not have lives here: an allocation
//! counter, a camera that replays frames from memory through the real format conversion, the
//! peak FLOP rate of one core, percentiles.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::actuation::{Polarity, RecordingPin, RejectLine, StatusLine};
use crate::bundle::Bundle;
use crate::capture::convert::{convert, CameraFormat};
use crate::capture::{CaptureError, Frame, FrameMeta, FrameSource, PixelFormat, Prefetched};
use crate::clock::MonotonicClock;
use crate::decision::{AlarmPolicy, Decider};
use crate::display::MemoryFramebuffer;
use crate::model::InferError;
use crate::pipeline::{AlarmOutput, Engine, Inspector, Outputs};
use crate::preprocess::Preprocessor;
use crate::scoring::Scorer;
use crate::synth::SynthConveyor;

/// A global allocator that counts allocations (and reallocations) per thread in two tallies:
/// the engine's, while [`in_engine`] runs, and everything else's. The `anovit` binary and the
/// allocation test install it; the count costs a thread-local increment per allocation.
pub struct CountingAlloc;

thread_local! {
    static OURS: Cell<u64> = const { Cell::new(0) };
    static ENGINE: Cell<u64> = const { Cell::new(0) };
    static IN_ENGINE: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // try_with: the thread-locals may be gone while a thread shuts down.
    let _ = IN_ENGINE.try_with(|e| {
        let tally = if e.get() { &ENGINE } else { &OURS };
        let _ = tally.try_with(|c| c.set(c.get() + 1));
    });
}

// SAFETY: forwards every call to the system allocator unchanged; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, n) }
    }
}

/// Allocations made on this thread so far: `(ours, the engine's)`. Both stay 0 unless
/// [`CountingAlloc`] is the global allocator.
pub fn allocations() -> (u64, u64) {
    (OURS.with(Cell::get), ENGINE.with(Cell::get))
}

/// Runs `f` with its allocations on this thread tallied as the engine's.
pub fn in_engine<R>(f: impl FnOnce() -> R) -> R {
    IN_ENGINE.with(|e| e.set(true));
    let r = f();
    IN_ENGINE.with(|e| e.set(false));
    r
}

/// An engine whose allocations are tallied apart from the loop's (see [`in_engine`]).
pub struct Tallied<E>(pub E);

impl<E: Engine> Engine for Tallied<E> {
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        let inner = &mut self.0;
        in_engine(move || inner.infer(input))
    }
}

/// Median, 99th percentile and friends of a set of times, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub median_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Summary {
    /// Summarises `samples_ms` (any order; empty gives zeros).
    pub fn of(samples_ms: &[f64]) -> Summary {
        if samples_ms.is_empty() {
            return Summary::default();
        }
        let mut s = samples_ms.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        Summary {
            n,
            median_ms: median,
            p99_ms: nearest_rank(&s, 99),
            min_ms: s[0],
            mean_ms: s.iter().sum::<f64>() / n as f64,
        }
    }
}

/// The `p`-th percentile of sorted samples by nearest rank (the smallest sample with at least
/// p % of the samples at or below it).
pub fn nearest_rank(sorted: &[f64], p: u32) -> f64 {
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Runs `engine` `runs` times on `input`; the time of each run in milliseconds.
pub fn time_runs(engine: &mut impl Engine, input: &[f32], runs: usize) -> Result<Vec<f64>, InferError> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        engine.infer(input)?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Peak single-precision rate of one core in GFLOP/s (an FMA counts 2), measured with
/// independent fused multiply-adds in the widest vectors this CPU has; and what it used.
/// The floor of a model's time is its FLOPs over this rate.
pub fn peak_gflops(min_time: Duration) -> (f64, &'static str) {
    let (kernel, flop_per_iter, what) = peak_kernel();
    let mut best = 0.0f64;
    let mut iters = 1_000_000u64;
    let start = Instant::now();
    for _ in 0..3 {
        loop {
            let t = Instant::now();
            std::hint::black_box(kernel(std::hint::black_box(iters)));
            let s = t.elapsed().as_secs_f64();
            if s > 0.05 {
                best = best.max((iters * flop_per_iter) as f64 / s / 1e9);
                break;
            }
            iters *= 4;
        }
        if start.elapsed() > min_time && best > 0.0 {
            break;
        }
    }
    (best, what)
}

/// Twelve independent accumulators hide the FMA latency on every core in use (4-5 cycles,
/// two ports at most).
const ACC: usize = 12;

type PeakKernel = fn(u64) -> f32;

#[cfg(target_arch = "x86_64")]
fn peak_kernel() -> (PeakKernel, u64, &'static str) {
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY (both closures): only called after the feature check above.
        (|n| unsafe { x86::fma512(n) }, (ACC * 16 * 2) as u64, "AVX-512 FMA")
    } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        (|n| unsafe { x86::fma256(n) }, (ACC * 8 * 2) as u64, "AVX2 FMA")
    } else {
        (scalar_fma, (ACC * 2) as u64, "scalar")
    }
}

#[cfg(target_arch = "aarch64")]
fn peak_kernel() -> (PeakKernel, u64, &'static str) {
    (arm::fma128, (ACC * 4 * 2) as u64, "NEON FMA")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn peak_kernel() -> (PeakKernel, u64, &'static str) {
    (scalar_fma, (ACC * 2) as u64, "scalar")
}

#[allow(dead_code)]
fn scalar_fma(n: u64) -> f32 {
    let mut a = [1.0f32; ACC];
    for _ in 0..n {
        for x in a.iter_mut() {
            *x = x.mul_add(0.999_999, 1e-7);
        }
    }
    a.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ACC;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(n: u64) -> f32 {
        let mut a = [_mm512_set1_ps(1.0); ACC];
        let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..n {
            for x in a.iter_mut() {
                *x = _mm512_fmadd_ps(*x, m, c);
            }
        }
        _mm512_reduce_add_ps(a.iter().fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, *x)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(n: u64) -> f32 {
        let mut a = [_mm256_set1_ps(1.0); ACC];
        let (m, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..n {
            for x in a.iter_mut() {
                *x = _mm256_fmadd_ps(*x, m, c);
            }
        }
        let s = a.iter().fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        lanes.iter().sum()
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::ACC;
    use std::arch::aarch64::*;

    pub(super) fn fma128(n: u64) -> f32 {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe {
            let mut a = [vdupq_n_f32(1.0); ACC];
            let (m, c) = (vdupq_n_f32(0.999_999), vdupq_n_f32(1e-7));
            for _ in 0..n {
                for x in a.iter_mut() {
                    *x = vfmaq_f32(c, *x, m);
                }
            }
            a.iter().map(|x| vaddvq_f32(*x)).sum()
        }
    }
}

/// A camera that replays frames from memory in the camera's own format (YUYV, what most USB
/// and CSI cameras deliver), copying each one out as the V4L2 source does from its ring: the
/// capture stage's real work without the driver.
pub struct MemoryCamera {
    yuyv: Vec<Vec<u8>>,
    truth: Vec<(bool, &'static str)>,
    width: usize,
    height: usize,
    frame: Vec<u8>,
    next: usize,
    left: u64,
    meta: FrameMeta,
}

impl MemoryCamera {
    /// `distinct` synthetic conveyor frames of `width x height` (even width), replayed `total`
    /// times in turn.
    pub fn synthetic(width: usize, height: usize, distinct: usize, total: u64) -> Self {
        let gen = SynthConveyor::new(2026, width, height, 0.25);
        let (mut rgb, mut mask) = (vec![0u8; width * height * 3], vec![0u8; width * height]);
        let mut yuyv = Vec::with_capacity(distinct);
        let mut truth = Vec::with_capacity(distinct);
        for i in 0..distinct as u64 {
            let spec = gen.spec(i);
            gen.render(spec, &mut rgb, &mut mask);
            yuyv.push(rgb_to_yuyv(&rgb, width, height));
            truth.push((spec.defect.is_some(), spec.defect.map_or("good", |d| d.name())));
        }
        Self {
            yuyv,
            truth,
            width,
            height,
            frame: vec![0; width * height * 2],
            next: 0,
            left: total,
            meta: FrameMeta::new(width, height, PixelFormat::Yuyv),
        }
    }
}

impl FrameSource for MemoryCamera {
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let i = self.next % self.yuyv.len();
        convert(CameraFormat::Yuyv, &self.yuyv[i], self.width, self.height, self.width * 2, &mut self.frame)
            .map_err(|_| CaptureError::Corrupt)?;
        self.meta.seq = self.next as u64;
        self.meta.timestamp = now;
        self.meta.truth = Some(self.truth[i].0);
        self.meta.label.clear();
        let _ = self.meta.label.push_str(self.truth[i].1);
        self.next += 1;
        Ok(Some(Frame { data: &self.frame, meta: &self.meta }))
    }

    fn max_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }
}

/// RGB24 to YUYV 4:2:2, BT.601 limited range (the inverse of the capture conversion; chroma
/// of each pixel pair averaged).
pub fn rgb_to_yuyv(rgb: &[u8], width: usize, height: usize) -> Vec<u8> {
    let y = |p: &[u8]| ((66 * p[0] as i32 + 129 * p[1] as i32 + 25 * p[2] as i32 + 128) >> 8) + 16;
    let u = |p: &[u8]| ((-38 * p[0] as i32 - 74 * p[1] as i32 + 112 * p[2] as i32 + 128) >> 8) + 128;
    let v = |p: &[u8]| ((112 * p[0] as i32 - 94 * p[1] as i32 - 18 * p[2] as i32 + 128) >> 8) + 128;
    let mut out = Vec::with_capacity(width * height * 2);
    for pair in rgb.chunks_exact(6) {
        let (a, b) = (&pair[..3], &pair[3..]);
        out.extend([y(a), (u(a) + u(b)) / 2, y(b), (v(a) + v(b)) / 2].map(|x| x.clamp(0, 255) as u8));
    }
    out
}

/// The whole loop, frame by frame.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoopFigures {
    /// Capture on a thread of its own, one frame ahead (`[camera] prefetch = true`).
    pub prefetch: bool,
    /// Frames measured (after the warm-up).
    pub frames: usize,
    /// Camera frame size (YUYV, converted every frame).
    pub camera: [usize; 2],
    /// Frames per second over the measured frames, wall clock.
    pub fps: f64,
    /// Capture per frame as the loop sees it: the conversion, or with prefetch the wait for the
    /// capture thread's frame.
    pub capture: Summary,
    /// Frame to model input.
    pub preprocess: Summary,
    /// The plan.
    pub infer: Summary,
    /// Anomaly map and score.
    pub score: Summary,
    /// Decide, actuate, display, event log, summaries.
    pub output: Summary,
    /// Everything but the plan, per frame.
    pub around: Summary,
    /// Mean time around the plan over mean plan time.
    pub around_share: f64,
    /// Capture (the frame's timestamp) to verdict and outputs.
    pub latency: Summary,
    /// p99 over p50 of the latency.
    pub p99_over_p50: f64,
    /// Heap allocations per frame in this crate's code.
    pub allocs_ours_per_frame: f64,
    /// Heap allocations per frame inside the engine (tract).
    pub allocs_engine_per_frame: f64,
}

/// Runs the inspection loop as `anovit run` wires it (display, event log to a file, reject,
/// health and alarm lines) on `frames` frames of a memory camera after `warmup` frames, and
/// measures every stage; with `prefetch`, the camera is read on a capture thread as
/// `anovit run` does by default. `engine` must be the bundle's model.
pub fn bench_loop(
    bundle: &Bundle,
    engine: impl Engine,
    camera: (usize, usize),
    prefetch: bool,
    warmup: usize,
    frames: usize,
    events: &Path,
) -> std::io::Result<LoopFigures> {
    let m = &bundle.manifest;
    let clock = MonotonicClock::new();
    let cam = MemoryCamera::synthetic(camera.0, camera.1, 16, (warmup + frames) as u64);
    let source: Box<dyn FrameSource> = if prefetch { Box::new(Prefetched::spawn(cam, clock)?) } else { Box::new(cam) };
    let line = RejectLine::new(RecordingPin::<_, 1024>::new(clock), Polarity::ActiveHigh, Duration::from_millis(40))
        .unwrap_or_else(|e| match e {});
    let status_line =
        || StatusLine::new(Box::new(RecordingPin::<_, 16>::new(clock)), false).map_err(std::io::Error::other);
    let outputs = Outputs {
        display: Some(MemoryFramebuffer::new(320, 240)),
        events: Some(Box::new(std::io::BufWriter::new(std::fs::File::create(events)?))),
        summary_every: Duration::from_secs(5),
        health: Some(status_line()?),
        encoder: None,
        alarm: Some(AlarmOutput { line: status_line()?, policy: AlarmPolicy::new(3, 10) }),
        ..Outputs::default()
    };
    let mut insp = Inspector::new(
        source,
        Preprocessor::new(&m.input),
        Tallied(engine),
        Scorer::new(m.input.width(), m.input.height(), &m.scoring).with_reference(bundle.reference.as_ref()),
        Decider::new(m.threshold.value, Duration::from_secs(1)),
        line,
        clock,
        outputs,
    );
    for _ in 0..warmup {
        insp.step();
    }
    let mut t: [Vec<f64>; 7] = std::array::from_fn(|_| Vec::with_capacity(frames));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (ours0, engine0) = allocations();
    let start = Instant::now();
    let mut n = 0;
    while let Some(o) = insp.step() {
        let s = o.times;
        for (v, x) in t.iter_mut().zip([s.capture, s.preprocess, s.infer, s.score, s.output]) {
            v.push(ms(x));
        }
        t[5].push(ms(s.total() - s.infer));
        // From the frame's timestamp (its capture), so a frame captured ahead counts its wait.
        let captured = o.meta.as_ref().map_or(Duration::ZERO, |m| m.timestamp);
        t[6].push(ms(o.decided_at.saturating_sub(captured) + s.output));
        n += 1;
    }
    let wall = start.elapsed().as_secs_f64();
    let (ours1, engine1) = allocations();
    let report = insp.finish();
    std::io::stdout().flush()?;
    if report.counters.frames as usize != warmup + n {
        return Err(std::io::Error::other("the loop lost frames while being measured"));
    }
    let [capture, preprocess, infer, score, output, around, latency] = t.each_ref().map(|v| Summary::of(v));
    Ok(LoopFigures {
        prefetch,
        frames: n,
        camera: [camera.0, camera.1],
        fps: n as f64 / wall,
        capture,
        preprocess,
        infer,
        score,
        output,
        around,
        around_share: around.mean_ms / infer.mean_ms,
        latency,
        p99_over_p50: latency.p99_ms / latency.median_ms,
        allocs_ours_per_frame: (ours1 - ours0) as f64 / n as f64,
        allocs_engine_per_frame: (engine1 - engine0) as f64 / n as f64,
    })
}

/// Peak resident memory of a child process run to its end, in bytes (the kernel's high-water
/// mark, `ru_maxrss`), with its exit status. Call it before waiting for any other child: the
/// figure is the largest of this process's waited-for children.
pub fn child_peak_rss(cmd: &mut std::process::Command) -> std::io::Result<(std::process::ExitStatus, u64)> {
    let status = cmd.status()?;
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((status, ru.ru_maxrss as u64 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_median_and_nearest_rank_p99() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.n, s.median_ms, s.min_ms, s.mean_ms, s.p99_ms), (5, 3.0, 1.0, 3.0, 5.0));
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 10.0]).median_ms, 2.5);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&hundred, 99), 99.0);
        assert_eq!(nearest_rank(&hundred, 50), 50.0);
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn yuyv_round_trip_stays_close_to_the_rgb_it_came_from() {
        let (w, h) = (8, 2);
        // Smooth colours: chroma subsampling keeps them.
        let rgb: Vec<u8> = (0..w * h).flat_map(|i| [(40 + i * 3) as u8, (90 + i) as u8, (200 - i * 2) as u8]).collect();
        let yuyv = rgb_to_yuyv(&rgb, w, h);
        assert_eq!(yuyv.len(), w * h * 2);
        let mut back = vec![0u8; w * h * 3];
        crate::capture::convert::yuyv_frame(&yuyv, w, &mut back);
        let worst = rgb.iter().zip(&back).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        assert!(worst <= 6, "largest channel error {worst}");
    }

    #[test]
    fn memory_camera_replays_in_turn_and_ends() {
        let mut cam = MemoryCamera::synthetic(64, 48, 2, 3);
        let mut labels = Vec::new();
        while let Some(f) = cam.next_frame(Duration::from_millis(7)).unwrap() {
            assert_eq!((f.data.len(), f.meta.format), (64 * 48 * 2, PixelFormat::Yuyv));
            assert_eq!(f.meta.timestamp, Duration::from_millis(7));
            labels.push((f.meta.seq, f.meta.truth));
        }
        assert_eq!(labels.len(), 3);
        assert_eq!(labels[2].1, labels[0].1, "frame 2 replays frame 0");
    }

    #[test]
    fn peak_rate_is_measured() {
        let (gflops, what) = peak_gflops(Duration::ZERO);
        assert!(gflops > 0.1, "{gflops} GFLOP/s with {what}");
    }
}
