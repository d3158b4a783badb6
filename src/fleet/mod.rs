//! What the station tells the plant: per-part events, periodic counters, faults, alarms and
//! reject thumbnails, put in an [`Outbox`] by the frame loop and sent by a publisher thread
//! (MQTT: `mqtt`); and what the set-up page shows ([`scene`], served by `page`).
//!
//! The loop never waits on the network: the outbox is a lock-free ring of fixed capacity. When
//! the broker is away it fills; when full, each new message displaces the oldest, which is
//! counted as dropped. Payload buffers are recycled through a pool, so that once the ring has
//! filled (or while it drains) the loop allocates nothing for its messages.

#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "web")]
pub mod page;
pub mod scene;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::decision::Verdict;
use crate::telemetry::{write_event, Counters, Health, Outcome};

/// What a message is about; the publisher maps it to a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One part's event (the event log's JSON line).
    Part,
    /// A part that was rejected because of a fault (the same JSON), for alerting.
    Fault,
    /// Periodic counters, rates and latencies.
    Counters,
    /// The alarm line rose or cleared.
    Alarm,
}

/// One message waiting to be sent.
#[derive(Debug)]
pub struct Message {
    /// Its kind.
    pub kind: Kind,
    /// JSON bytes.
    pub payload: Vec<u8>,
}

/// Totals of the outbox, shared with the publisher.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Messages put in.
    pub queued: AtomicU64,
    /// Messages displaced unsent because the outbox was full (the oldest first).
    pub dropped: AtomicU64,
    /// Messages the broker acknowledged (QoS 1) or that were written to it (QoS 0).
    pub delivered: AtomicU64,
    /// Reject thumbnails not taken because the previous one was still unsent.
    pub thumbnails_skipped: AtomicU64,
    /// Reject thumbnails delivered.
    pub thumbnails_sent: AtomicU64,
}

/// Snapshot of [`OutboxStats`] for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxTotals {
    /// Messages put in.
    pub queued: u64,
    /// Dropped unsent (outbox full).
    pub dropped: u64,
    /// Delivered.
    pub delivered: u64,
    /// Waiting in the outbox now.
    pub waiting: u64,
    /// Thumbnails skipped.
    pub thumbnails_skipped: u64,
    /// Thumbnails delivered.
    pub thumbnails_sent: u64,
}

/// The model's input image and anomaly map of the last rejected part, for a thumbnail.
#[derive(Debug)]
pub struct Thumbnail {
    /// The part.
    pub part: u64,
    /// Input width and height.
    pub width: usize,
    /// Input height.
    pub height: usize,
    /// Normalised model input, NCHW (3 planes).
    pub input: Vec<f32>,
    /// Anomaly map, `map_width x map_height`.
    pub map: Vec<f32>,
    /// Map width.
    pub map_width: usize,
    /// Map height.
    pub map_height: usize,
    /// Threshold when it was taken.
    pub threshold: f32,
    /// Set by the loop, cleared by the publisher once sent.
    pub pending: bool,
}

/// The model input's geometry and preprocessing constants, to turn it back into pixels.
#[derive(Clone, Copy, Debug)]
pub struct Denorm {
    /// Input width (and the anomaly map's).
    pub width: usize,
    /// Input height.
    pub height: usize,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
}

/// The loop's side of publishing.
#[derive(Debug)]
pub struct Outbox {
    queue: ArrayQueue<Message>,
    pool: ArrayQueue<Vec<u8>>,
    /// Totals.
    pub stats: OutboxStats,
    counters_every: Duration,
    /// Loop time of the last counters message, microseconds + 1 (0: the period has not started).
    last_counters: AtomicU64,
    thumbnail: Option<(Mutex<Thumbnail>, Denorm)>,
}

/// Spare payload buffers kept for the loop.
const POOL: usize = 64;
/// Capacity of a fresh payload buffer: a part event is about 400 bytes.
const PAYLOAD: usize = 768;

impl Outbox {
    /// An outbox holding up to `capacity` messages (at least 1), with counters every
    /// `counters_every` of loop time and, with `thumbnails`, a slot for reject thumbnails.
    pub fn new(capacity: usize, counters_every: Duration, thumbnails: Option<Denorm>) -> Arc<Self> {
        let pool = ArrayQueue::new(POOL);
        for _ in 0..POOL {
            let _ = pool.push(Vec::with_capacity(PAYLOAD));
        }
        let thumbnail = thumbnails.map(|d| {
            // Sized for the model once: taking a thumbnail copies without allocating.
            let t = Thumbnail {
                part: 0,
                width: 0,
                height: 0,
                input: Vec::with_capacity(3 * d.width * d.height),
                map: Vec::with_capacity(d.width * d.height),
                map_width: 0,
                map_height: 0,
                threshold: 0.0,
                pending: false,
            };
            (Mutex::new(t), d)
        });
        Arc::new(Self {
            queue: ArrayQueue::new(capacity.max(1)),
            pool,
            stats: OutboxStats::default(),
            counters_every,
            last_counters: AtomicU64::new(0),
            thumbnail,
        })
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Capacity in messages.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// The totals now.
    pub fn totals(&self) -> OutboxTotals {
        let s = &self.stats;
        OutboxTotals {
            queued: s.queued.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            waiting: self.len() as u64,
            thumbnails_skipped: s.thumbnails_skipped.load(Ordering::Relaxed),
            thumbnails_sent: s.thumbnails_sent.load(Ordering::Relaxed),
        }
    }

    /// A cleared payload buffer (from the pool while it has one).
    fn buffer(&self) -> Vec<u8> {
        match self.pool.pop() {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(PAYLOAD),
        }
    }

    /// Gives a payload buffer back for reuse.
    pub fn recycle(&self, buffer: Vec<u8>) {
        let _ = self.pool.push(buffer);
    }

    /// Tops the pool up (the publisher calls it after handing payloads to the network, so that
    /// the loop finds buffers without allocating).
    pub fn restock(&self) {
        while !self.pool.is_full() {
            if self.pool.push(Vec::with_capacity(PAYLOAD)).is_err() {
                break;
            }
        }
    }

    /// Queues a message; when full, the oldest message is dropped (and counted) to make room.
    pub fn push(&self, kind: Kind, payload: Vec<u8>) {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = self.queue.force_push(Message { kind, payload }) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.recycle(old.payload);
        }
    }

    /// The oldest message waiting.
    pub fn pop(&self) -> Option<Message> {
        self.queue.pop()
    }

    /// Queues one part's event, and again as a fault when a fault rejected it.
    pub fn part(&self, o: &Outcome, threshold: f32) {
        let mut b = self.buffer();
        if write_event(&mut b, o, threshold).is_err() {
            self.recycle(b);
            return;
        }
        if b.last() == Some(&b'\n') {
            b.pop();
        }
        if matches!(o.verdict, Verdict::Fault(_)) {
            let mut f = self.buffer();
            f.extend_from_slice(&b);
            self.push(Kind::Fault, f);
        }
        self.push(Kind::Part, b);
    }

    /// Whether the counters are due: `counters_every` has passed since the last time (`now` on
    /// the loop's clock; the first call only starts the period).
    pub fn counters_due(&self, now: Duration) -> bool {
        let now_us = now.as_micros() as u64 + 1;
        let last = self.last_counters.load(Ordering::Relaxed);
        if last != 0 && now_us.saturating_sub(last) < self.counters_every.as_micros() as u64 {
            return false;
        }
        self.last_counters.store(now_us, Ordering::Relaxed);
        last != 0
    }

    /// Queues the counters now (also at the end of a run).
    pub fn push_counters(&self, now: Duration, c: &Counters, health: Health, fps: f32, p50: Duration, p99: Duration) {
        #[derive(serde::Serialize)]
        struct Msg<'a> {
            at_us: u128,
            health: Health,
            counters: &'a Counters,
            fps: f32,
            latency_p50_us: u128,
            latency_p99_us: u128,
            outbox: OutboxTotals,
        }
        let msg = Msg {
            at_us: now.as_micros(),
            health,
            counters: c,
            fps,
            latency_p50_us: p50.as_micros(),
            latency_p99_us: p99.as_micros(),
            outbox: self.totals(),
        };
        let mut b = self.buffer();
        if serde_json::to_writer(&mut b, &msg).is_ok() {
            self.push(Kind::Counters, b);
        } else {
            self.recycle(b);
        }
    }

    /// Queues an alarm change.
    pub fn alarm(&self, part: u64, on: bool, why: &str) {
        let mut b = self.buffer();
        let ok = write!(b, "{{\"seq\":{part},\"alarm\":{on},\"why\":").is_ok()
            && serde_json::to_writer(&mut b, why).is_ok()
            && b.write_all(b"}").is_ok();
        if ok {
            self.push(Kind::Alarm, b);
        } else {
            self.recycle(b);
        }
    }

    /// Whether reject thumbnails are published.
    pub fn wants_thumbnails(&self) -> bool {
        self.thumbnail.is_some()
    }

    /// Offers the model input and anomaly map of rejected part `part`. Taken only when the
    /// previous thumbnail has been sent (otherwise skipped and counted): during an outage the
    /// first reject's thumbnail waits, later ones are not kept.
    #[allow(clippy::too_many_arguments)]
    pub fn offer_thumbnail(
        &self,
        part: u64,
        input: &[f32],
        width: usize,
        height: usize,
        map: &[f32],
        map_width: usize,
        map_height: usize,
        threshold: f32,
    ) {
        let Some((slot, _)) = &self.thumbnail else { return };
        let taken = slot.try_lock().ok().filter(|t| !t.pending).map(|mut t| {
            t.part = part;
            (t.width, t.height, t.map_width, t.map_height, t.threshold) =
                (width, height, map_width, map_height, threshold);
            t.input.clear();
            t.input.extend_from_slice(input);
            t.map.clear();
            t.map.extend_from_slice(map);
            t.pending = true;
        });
        if taken.is_none() {
            self.stats.thumbnails_skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The pending thumbnail as a JPEG (the part as the model saw it, its anomalies in heat
    /// colours over it), with its part number; the slot is freed.
    pub fn take_thumbnail_jpeg(&self) -> Option<(u64, Vec<u8>)> {
        let (slot, denorm) = self.thumbnail.as_ref()?;
        let mut t = slot.lock().ok()?;
        if !t.pending {
            return None;
        }
        t.pending = false;
        let rgb = overlay(&t, denorm);
        let mut jpeg = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85);
        let (w, h) = (t.width as u32, t.height as u32);
        image::ImageEncoder::write_image(enc, &rgb, w, h, image::ExtendedColorType::Rgb8).ok()?;
        Some((t.part, jpeg))
    }
}

/// The model input turned back into RGB pixels, blended with the heat colour of the anomaly
/// map where it approaches the threshold.
fn overlay(t: &Thumbnail, d: &Denorm) -> Vec<u8> {
    let (w, h) = (t.width, t.height);
    let plane = w * h;
    let mut rgb = vec![0u8; plane * 3];
    if t.input.len() < plane * 3 || t.map.len() < t.map_width * t.map_height || t.map_width == 0 {
        return rgb;
    }
    for y in 0..h {
        let my = y * t.map_height / h;
        for x in 0..w {
            let i = y * w + x;
            let m = t.map[my * t.map_width + x * t.map_width / w];
            let px: [f32; 3] =
                std::array::from_fn(|c| ((t.input[c * plane + i] * d.std[c] + d.mean[c]) * 255.0).clamp(0.0, 255.0));
            rgb[i * 3..i * 3 + 3].copy_from_slice(&blend(px.map(|v| v as u8), m, t.threshold));
        }
    }
    rgb
}

/// One pixel with anomaly `value` over it: from half the threshold up, yellow turning red at
/// the threshold, more opaque the hotter (red and yellow stand out on grey and metal parts).
pub(crate) fn blend(px: [u8; 3], value: f32, threshold: f32) -> [u8; 3] {
    let v = if threshold > 0.0 { (value / threshold).clamp(0.0, 1.0) } else { 0.0 };
    let hot = ((v - 0.5) * 2.0).clamp(0.0, 1.0);
    if hot == 0.0 {
        return px;
    }
    let alpha = 0.35 + 0.45 * hot;
    let heat = [255.0, 255.0 * (1.0 - hot), 0.0];
    std::array::from_fn(|c| (f32::from(px[c]) * (1.0 - alpha) + heat[c] * alpha) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts_it() {
        let ob = Outbox::new(3, Duration::from_secs(1), None);
        for i in 0..5u8 {
            ob.push(Kind::Part, vec![i]);
        }
        let t = ob.totals();
        assert_eq!((t.queued, t.dropped, t.waiting), (5, 2, 3));
        let left: Vec<u8> = std::iter::from_fn(|| ob.pop()).map(|m| m.payload[0]).collect();
        assert_eq!(left, [2, 3, 4]);
    }

    #[test]
    fn counters_come_once_per_period() {
        let ob = Outbox::new(16, Duration::from_secs(10), None);
        let c = Counters::default();
        for s in [0, 5, 10, 15, 19, 20] {
            let now = Duration::from_secs(s);
            if ob.counters_due(now) {
                ob.push_counters(now, &c, Health::default(), 1.0, Duration::ZERO, Duration::ZERO);
            }
        }
        // Period starts at 0: messages at 10 and 20.
        assert_eq!(ob.len(), 2);
        let m = ob.pop().unwrap();
        assert_eq!(m.kind, Kind::Counters);
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["at_us"], 10_000_000);
        assert_eq!(v["outbox"]["queued"], 0);
    }

    #[test]
    fn alarm_reasons_are_escaped_json() {
        let ob = Outbox::new(4, Duration::from_secs(1), None);
        ob.alarm(7, true, "a \"quoted\" reason");
        let v: serde_json::Value = serde_json::from_slice(&ob.pop().unwrap().payload).unwrap();
        assert_eq!(v["alarm"], true);
        assert_eq!(v["why"], "a \"quoted\" reason");
    }

    #[test]
    fn one_thumbnail_waits_and_later_ones_are_skipped_until_it_is_sent() {
        let (w, h) = (8, 4);
        let d = Denorm { width: w, height: h, mean: [0.5; 3], std: [0.25; 3] };
        let ob = Outbox::new(4, Duration::from_secs(1), Some(d));
        // Mid-grey input; the map is hot on the right half only.
        let input = vec![0.0f32; 3 * w * h];
        let map: Vec<f32> = (0..w * h).map(|i| if i % w >= w / 2 { 2.0 } else { 0.0 }).collect();
        ob.offer_thumbnail(1, &input, w, h, &map, w, h, 1.0);
        ob.offer_thumbnail(2, &input, w, h, &map, w, h, 1.0);
        assert_eq!(ob.totals().thumbnails_skipped, 1);
        let (part, jpeg) = ob.take_thumbnail_jpeg().unwrap();
        assert_eq!(part, 1);
        let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (w as u32, h as u32));
        let [r, g, b] = img.get_pixel(1, 1).0;
        // The cool half is the part's grey (0.5 -> ~128), the hot half turns red.
        assert!(r.abs_diff(128) < 12 && g.abs_diff(128) < 12 && b.abs_diff(128) < 12, "{r} {g} {b}");
        let hot = img.get_pixel(w as u32 - 2, 1).0;
        assert!(hot[0] > 200 && hot[1] < 80 && hot[2] < 80, "{hot:?}");
        assert!(ob.take_thumbnail_jpeg().is_none());
        ob.offer_thumbnail(3, &input, w, h, &map, w, h, 1.0);
        assert_eq!(ob.take_thumbnail_jpeg().unwrap().0, 3);
    }
}
