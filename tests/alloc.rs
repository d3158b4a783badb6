//! The frame loop allocates no heap memory per frame in this crate's code.
//!
//! A counting global allocator counts every allocation made on this test's thread; the engine
//! wrapper switches the count to a separate tally while tract runs, so the model boundary is
//! reported on its own (it is tract's, and budgeted, not zero).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use anovit::actuation::{Polarity, RecordingPin, RejectLine, StatusLine};
use anovit::capture::convert::{convert, CameraFormat};
use anovit::capture::SyntheticSource;
use anovit::clock::MonotonicClock;
use anovit::decision::{AlarmPolicy, Decider};
use anovit::display::MemoryFramebuffer;
use anovit::model::{InferError, Model};
use anovit::pipeline::{AlarmOutput, Engine, Inspector, Outputs};
use anovit::preprocess::Preprocessor;
use anovit::scoring::Scorer;
use anovit::service::Notifier;
use anovit::synth::SynthConveyor;

struct Counting;

thread_local! {
    static OURS: Cell<u64> = const { Cell::new(0) };
    static TRACT: Cell<u64> = const { Cell::new(0) };
    static IN_ENGINE: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // try_with: the thread-locals may be gone while a thread shuts down.
    let _ = IN_ENGINE.try_with(|e| {
        let c = if e.get() { &TRACT } else { &OURS };
        let _ = c.try_with(|c| c.set(c.get() + 1));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

struct Tallied(Model);

impl Engine for Tallied {
    fn infer(&mut self, input: &[f32]) -> Result<&[f32], InferError> {
        IN_ENGINE.with(|e| e.set(true));
        let r = self.0.infer(input);
        IN_ENGINE.with(|e| e.set(false));
        r
    }
}

#[test]
fn steady_state_loop_allocates_nothing_in_our_code() {
    let bundle = common::demo_bundle();
    let m = &bundle.manifest;
    let clock = MonotonicClock::new();
    let source = SyntheticSource::new(SynthConveyor::new(5, 256, 256, 0.3), 0, None);
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify_socket = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify_socket.set_nonblocking(true).unwrap();
    let line = RejectLine::new(RecordingPin::<_, 1024>::new(clock), Polarity::GoodEnergised, Duration::from_millis(1))
        .unwrap();
    let outputs = Outputs {
        display: Some(MemoryFramebuffer::new(320, 240)),
        events: Some(Box::new(std::io::BufWriter::new(std::io::sink()))),
        // Summaries go to the log every frame here, so their cost is measured too.
        summary_every: Duration::ZERO,
        health: Some(StatusLine::new(Box::new(RecordingPin::<_, 16>::new(clock)), false).unwrap()),
        encoder: Some(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0))),
        alarm: Some(AlarmOutput {
            line: StatusLine::new(Box::new(RecordingPin::<_, 16>::new(clock)), false).unwrap(),
            policy: AlarmPolicy::new(3, 10),
        }),
        // A watchdog ping on every part (period zero), so that the send path is measured; nobody
        // reads the socket, so its queue fills and the sends fail without blocking, as designed.
        notifier: Some(Notifier::new(notify_path.to_str().unwrap(), Some(Duration::ZERO)).unwrap()),
    };
    anovit::logger::init(log::LevelFilter::Off);
    let mut insp = Inspector::new(
        source,
        Preprocessor::new(&m.input),
        Tallied(Model::load(bundle).unwrap()),
        Scorer::new(m.input.width(), m.input.height(), &m.scoring),
        Decider::new(m.threshold.value, Duration::from_secs(60)),
        line,
        clock,
        outputs,
    );
    // Warm-up: first-use allocations (stdout buffers, lazy statics) are not per-frame.
    for _ in 0..3 {
        insp.step().unwrap();
    }
    let (ours0, tract0) = (OURS.with(Cell::get), TRACT.with(Cell::get));
    let frames = 20;
    let mut rejects = 0;
    for _ in 0..frames {
        rejects += insp.step().unwrap().verdict.is_reject() as u64;
    }
    let ours = OURS.with(Cell::get) - ours0;
    let tract = TRACT.with(Cell::get) - tract0;
    println!(
        "allocations over {frames} frames: ours {ours}, tract {tract} ({:.1} per frame at the model boundary)",
        tract as f64 / frames as f64
    );
    assert!(rejects > 0, "the run should include rejects so that the reject path is measured");
    assert_eq!(ours, 0, "our stages allocated {ours} times in {frames} frames");
    assert!(tract > 0, "the tally must see tract's allocations, or it is not measuring anything");
}

#[test]
fn camera_format_conversion_allocates_nothing() {
    let (w, h) = (640, 480);
    let mut rgb = vec![0u8; w * h * 3];
    let mut grey = vec![0u8; w * h];
    let yuyv: Vec<u8> = (0..w * h * 2).map(|i| (i * 7 % 251) as u8).collect();
    let rgb_in: Vec<u8> = (0..w * h * 3).map(|i| (i % 253) as u8).collect();
    let before = OURS.with(Cell::get);
    for _ in 0..5 {
        convert(CameraFormat::Yuyv, &yuyv, w, h, w * 2, &mut rgb).unwrap();
        convert(CameraFormat::Rgb24, &rgb_in, w, h, w * 3, &mut rgb).unwrap();
        convert(CameraFormat::Grey, &rgb_in[..w * h], w, h, w, &mut grey).unwrap();
    }
    assert_eq!(OURS.with(Cell::get) - before, 0, "YUYV/RGB24/GREY conversion allocated");
}
