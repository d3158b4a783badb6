//! Capture one frame ahead on a thread of its own, so that JPEG decoding or rendering run on
//! another core while the loop works on the frame before: they leave the frame's critical path
//! (`[camera] prefetch = true`; docs/PERF.md measures both ways).
//!
//! Two buffers circulate between the capture thread and the loop: the loop holds the frame it is
//! judging, the capture thread fills the other one and then waits, so a frame waits at most one
//! loop period and nothing is allocated per frame. Errors, the end of the source and the source's
//! counters pass through unchanged; frame timestamps are those of the capture thread (or the
//! camera's), so latency still counts from exposure.

use std::sync::mpsc::{sync_channel, Receiver, SendError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{CaptureError, Frame, FrameMeta, FrameSource, PixelFormat, SourceStats};
use crate::clock::Clock;

struct Slot {
    data: Vec<u8>,
    meta: FrameMeta,
}

enum Msg {
    Frame(Slot),
    Failed(CaptureError, Slot),
    End,
}

/// A frame source read one frame ahead on a capture thread.
pub struct Prefetched {
    empty: Option<SyncSender<Slot>>,
    full: Receiver<Msg>,
    current: Option<Slot>,
    stats: Arc<Mutex<SourceStats>>,
    max_size: (usize, usize),
    ended: bool,
}

impl Prefetched {
    /// Moves `inner` onto a capture thread that reads it with `clock`'s time.
    pub fn spawn<S, C>(mut inner: S, clock: C) -> std::io::Result<Self>
    where
        S: FrameSource + Send + 'static,
        C: Clock + Send + 'static,
    {
        let max_size = inner.max_size();
        let bytes = max_size.0 * max_size.1 * PixelFormat::Rgb8.bytes_per_pixel();
        let (empty, empty_rx) = sync_channel::<Slot>(2);
        let (full_tx, full) = sync_channel::<Msg>(2);
        for _ in 0..2 {
            let meta = FrameMeta::new(max_size.0, max_size.1, PixelFormat::Rgb8);
            empty.send(Slot { data: Vec::with_capacity(bytes), meta }).expect("the receiver is alive");
        }
        let stats = Arc::new(Mutex::new(SourceStats::default()));
        let shared = Arc::clone(&stats);
        std::thread::Builder::new().name("anovit-capture".into()).spawn(move || {
            // Ends when the loop lets go of its side (stop) or the source ends.
            while let Ok(mut slot) = empty_rx.recv() {
                let msg = match inner.next_frame(clock.now()) {
                    Ok(Some(f)) => {
                        slot.data.clear();
                        slot.data.extend_from_slice(f.data);
                        slot.meta.clone_from(f.meta);
                        Msg::Frame(slot)
                    }
                    Ok(None) => Msg::End,
                    Err(e) => Msg::Failed(e, slot),
                };
                if let Ok(mut s) = shared.lock() {
                    *s = inner.stats();
                }
                let end = matches!(msg, Msg::End);
                if let Err(SendError(Msg::Frame(slot))) = full_tx.send(msg) {
                    log::warn!("frame {} was captured as the loop stopped and was not judged", slot.meta.seq);
                }
                if end {
                    break;
                }
            }
        })?;
        Ok(Self { empty: Some(empty), full, current: None, stats, max_size, ended: false })
    }

    fn give_back(&mut self, slot: Slot) {
        if let Some(tx) = &self.empty {
            // Fails only once the capture thread is gone; the slot is then simply dropped.
            let _ = tx.send(slot);
        }
    }
}

impl FrameSource for Prefetched {
    fn next_frame(&mut self, _now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        if let Some(done) = self.current.take() {
            self.give_back(done);
        }
        if self.ended {
            return Ok(None);
        }
        match self.full.recv() {
            Ok(Msg::Frame(slot)) => {
                let slot = self.current.insert(slot);
                Ok(Some(Frame { data: &slot.data, meta: &slot.meta }))
            }
            Ok(Msg::Failed(e, slot)) => {
                self.give_back(slot);
                Err(e)
            }
            Ok(Msg::End) => {
                self.ended = true;
                Ok(None)
            }
            Err(_) => {
                // Only a panic in the source ends the thread without `End`.
                log::error!("the capture thread ended unexpectedly: no more frames");
                self.ended = true;
                Ok(None)
            }
        }
    }

    fn max_size(&self) -> (usize, usize) {
        self.max_size
    }

    fn stats(&self) -> SourceStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        // Closing the slot channel ends the capture thread after the capture in progress; it is
        // not joined, since a camera may take up to its timeout to answer.
        self.empty = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    /// Frames 0..n with their number in every byte; frame `fail` is a timeout instead.
    struct Numbered {
        n: u8,
        next: u8,
        fail: u8,
        data: Vec<u8>,
        meta: FrameMeta,
    }

    impl FrameSource for Numbered {
        fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
            if self.next == self.n {
                return Ok(None);
            }
            let i = self.next;
            self.next += 1;
            if i == self.fail {
                return Err(CaptureError::Timeout);
            }
            self.data.fill(i);
            self.meta.seq = u64::from(i);
            self.meta.timestamp = now;
            Ok(Some(Frame { data: &self.data, meta: &self.meta }))
        }

        fn max_size(&self) -> (usize, usize) {
            (4, 2)
        }

        fn stats(&self) -> SourceStats {
            SourceStats { dropped: u64::from(self.next), ..SourceStats::default() }
        }
    }

    fn numbered(n: u8, fail: u8) -> Numbered {
        Numbered { n, next: 0, fail, data: vec![0; 24], meta: FrameMeta::new(4, 2, PixelFormat::Rgb8) }
    }

    #[test]
    fn frames_errors_and_end_arrive_in_order() {
        let clock = FakeClock::new();
        clock.advance(Duration::from_millis(5));
        let mut p = Prefetched::spawn(numbered(5, 2), clock).unwrap();
        assert_eq!(p.max_size(), (4, 2));
        let mut seen = Vec::new();
        loop {
            match p.next_frame(Duration::ZERO) {
                Ok(Some(f)) => {
                    assert!(f.data.iter().all(|&b| u64::from(b) == f.meta.seq), "data and meta belong together");
                    assert_eq!(f.meta.timestamp, Duration::from_millis(5), "the capture thread's clock");
                    seen.push(Ok(f.meta.seq));
                }
                Ok(None) => break,
                Err(e) => seen.push(Err(e)),
            }
        }
        assert_eq!(seen, vec![Ok(0), Ok(1), Err(CaptureError::Timeout), Ok(3), Ok(4)]);
        assert_eq!(p.next_frame(Duration::ZERO).unwrap().map(|f| f.meta.seq), None, "stays ended");
        assert_eq!(p.stats().dropped, 5, "the source's counters come through");
    }

    #[test]
    fn the_capture_thread_stays_one_frame_ahead() {
        let mut p = Prefetched::spawn(numbered(100, 255), FakeClock::new()).unwrap();
        assert_eq!(p.next_frame(Duration::ZERO).unwrap().unwrap().meta.seq, 0);
        std::thread::sleep(Duration::from_millis(50));
        // Frame 0 held by the loop, frame 1 in the other buffer: the source was asked twice.
        assert_eq!(p.stats().dropped, 2);
        drop(p);
    }
}
