//! The built-in demo camera: synthetic conveyor frames rendered into buffers owned by the source.

use std::time::Duration;

use super::{CaptureError, Frame, FrameMeta, FrameSource, PixelFormat};
use crate::synth::SynthConveyor;

/// Renders conveyor frames on demand, each with its ground truth.
#[derive(Debug)]
pub struct SyntheticSource {
    gen: SynthConveyor,
    first: u64,
    count: Option<u64>,
    next: u64,
    rgb: Vec<u8>,
    mask: Vec<u8>,
    meta: FrameMeta,
}

impl SyntheticSource {
    /// Frames `first..first + count` of `gen` (`count = None`: endless).
    pub fn new(gen: SynthConveyor, first: u64, count: Option<u64>) -> Self {
        let (w, h) = (gen.width(), gen.height());
        Self {
            gen,
            first,
            count,
            next: 0,
            rgb: vec![0; w * h * 3],
            mask: vec![0; w * h],
            meta: FrameMeta::new(w, h, PixelFormat::Rgb8),
        }
    }

    /// The defect mask of the last frame (255 = defective pixel).
    pub fn mask(&self) -> &[u8] {
        &self.mask
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self, now: Duration) -> Result<Option<Frame<'_>>, CaptureError> {
        if self.count.is_some_and(|n| self.next >= n) {
            return Ok(None);
        }
        let spec = self.gen.spec(self.first + self.next);
        self.gen.render(spec, &mut self.rgb, &mut self.mask);
        self.meta.seq = self.next;
        self.meta.timestamp = now;
        self.meta.truth = Some(spec.defect.is_some());
        self.meta.label.clear();
        let _ = self.meta.label.push_str(spec.defect.map_or("good", |d| d.name()));
        self.next += 1;
        Ok(Some(Frame { data: &self.rgb, meta: &self.meta }))
    }

    fn max_size(&self) -> (usize, usize) {
        (self.gen.width(), self.gen.height())
    }
}
