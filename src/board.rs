//! Board profiles: `board/<name>.toml`, loaded and validated once at start-up.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default on a production
//! line), and every range is checked with a message that names the key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::actuation::Polarity;
use crate::capture::convert::CameraFormat;
use crate::error::{Error, Result};

/// Where frames come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// The built-in synthetic conveyor.
    Synthetic,
    /// A folder of images, replayed.
    Folder,
    /// A V4L2 camera (build with `--features hw-v4l`, on by default).
    V4l2,
}

/// Camera section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    /// Source kind.
    pub source: SourceKind,
    /// Folder to replay (`source = "folder"`), relative to the profile file.
    #[serde(default)]
    pub folder: Option<PathBuf>,
    /// Replay: start over at the end.
    #[serde(default, rename = "loop")]
    pub loops: bool,
    /// Synthetic: number of parts (0 = endless).
    #[serde(default = "default_parts")]
    pub parts: u64,
    /// Synthetic: share of defective parts.
    #[serde(default = "default_defect_rate")]
    pub defect_rate: f32,
    /// Synthetic: seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Synthetic: frame size in pixels (square).
    #[serde(default = "default_size")]
    pub size: usize,
    /// V4L2: device path (`/dev/video0`) or the start of the card name (`vivid`, a webcam's name).
    #[serde(default)]
    pub device: Option<String>,
    /// V4L2: pixel format (`yuyv`, `rgb24`, `grey`, `mjpeg`); absent = the first of these the
    /// camera offers.
    #[serde(default)]
    pub format: Option<CameraFormat>,
    /// V4L2: frame width.
    #[serde(default = "default_width")]
    pub width: u32,
    /// V4L2: frame height.
    #[serde(default = "default_height")]
    pub height: u32,
    /// V4L2: frames per second.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// V4L2: buffers in the capture ring.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// V4L2: no frame for this long is a stall (the part is rejected, the health line drops).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Capture one frame ahead on a thread of its own, so that decoding (MJPEG) runs on another
    /// core while the loop judges the frame before. Off by default: with a camera faster than
    /// the loop a frame then waits up to one loop period, and uncompressed frames cost the loop
    /// little to capture (docs/PERF.md has both ways).
    #[serde(default)]
    pub prefetch: bool,
}

fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> u32 {
    10
}
fn default_buffers() -> u32 {
    4
}
fn default_timeout_ms() -> u64 {
    1000
}

/// A GPIO line on a chip: its offset, or the name the device tree (or gpio-sim) gives it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LineSpec {
    /// Line offset on the chip.
    Offset(u32),
    /// Line name, e.g. `GPIO17`.
    Name(String),
}

impl fmt::Display for LineSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineSpec::Offset(n) => write!(f, "{n}"),
            LineSpec::Name(s) => write!(f, "{s:?}"),
        }
    }
}

fn default_parts() -> u64 {
    200
}
fn default_defect_rate() -> f32 {
    0.25
}
fn default_seed() -> u64 {
    2026
}
fn default_size() -> usize {
    crate::synth::SynthConveyor::DEFAULT_SIZE
}

/// Which output back-end drives the reject line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// A host stand-in that records edges (no hardware).
    Recording,
    /// A GPIO character-device line (build with `--features hw-gpio`).
    Gpio,
}

/// Reject output section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// Back-end.
    pub output: OutputKind,
    /// GPIO chip: device path (`/dev/gpiochip0`), name (`gpiochip0`) or label.
    #[serde(default)]
    pub chip: Option<String>,
    /// GPIO line: offset on the chip, or line name.
    #[serde(default)]
    pub line: Option<LineSpec>,
    /// Wiring.
    #[serde(default)]
    pub polarity: Polarity,
    /// Pulse width in milliseconds.
    pub pulse_ms: u64,
}

/// Which edges of an input count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Edges {
    /// Low to high.
    #[default]
    Rising,
    /// High to low.
    Falling,
    /// Both.
    Both,
}

/// A GPIO input with edge events: the part-present trigger or the belt encoder.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// GPIO chip: device path, name or label.
    pub chip: String,
    /// GPIO line: offset or name.
    pub line: LineSpec,
    /// Edges that count.
    #[serde(default)]
    pub edge: Edges,
    /// Trigger only: time from the edge until the part is in view, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

/// Health/ready output: energised while the station inspects (model loaded, camera delivering
/// frames); it drops when the camera stalls or vanishes and when `anovit` stops, so a PLC can
/// stop the belt.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// GPIO chip: device path, name or label.
    pub chip: String,
    /// GPIO line: offset or name.
    pub line: LineSpec,
    /// Drive the line low for "healthy".
    #[serde(default)]
    pub active_low: bool,
}

/// Alarm output: raised when parts keep faulting (late results, no frames, failed inference),
/// Where the ejector is, downstream of the camera (`[ejector]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EjectorPlacement {
    /// From the camera's view of a part to the ejector, along the belt, in millimetres.
    pub travel_mm: f64,
    /// The actuator's delay from signal to effect (air valve, diverter), in milliseconds.
    #[serde(default)]
    pub lead_ms: u64,
    /// Belt speed in millimetres per second: positions by the clock (no `[encoder]`).
    #[serde(default)]
    pub belt_mm_per_s: Option<f64>,
    /// Encoder edges per millimetre of belt: positions by the encoder (needs `[encoder]`).
    #[serde(default)]
    pub counts_per_mm: Option<f64>,
}

/// i.e. the station is not inspecting and the line should stop.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alarm {
    /// GPIO chip: device path, name or label.
    pub chip: String,
    /// GPIO line: offset or name.
    pub line: LineSpec,
    /// Drive the line low for "alarm".
    #[serde(default)]
    pub active_low: bool,
    /// Faults in a row that raise it.
    #[serde(default = "default_raise_after")]
    pub raise_after: u32,
    /// Parts judged on their merits in a row that clear it.
    #[serde(default = "default_clear_after")]
    pub clear_after: u32,
}

fn default_raise_after() -> u32 {
    3
}
fn default_clear_after() -> u32 {
    10
}

/// Longest travel from the camera to the ejector by the clock, in seconds.
const MAX_TRAVEL_S: f64 = 3600.0;
/// Longest travel from the camera to the ejector in encoder edges.
const MAX_TRAVEL_COUNTS: f64 = 1e12;

/// Timing section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Longest time from capture to verdict; a later result rejects the part.
    pub result_deadline_ms: u64,
}

/// Display back-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisplayKind {
    /// No display.
    None,
    /// In-memory framebuffer (PNG snapshots on request).
    Memory,
    /// A Linux framebuffer device (`device`): HDMI/DSI consoles, SPI TFTs and OLEDs with a
    /// kernel driver. The status view (`width` x `height`) is drawn at its top left.
    Fbdev,
    /// A 128x64 SSD1306 OLED on an I2C bus (`bus`, `address`), showing the `mono` view.
    Ssd1306,
}

/// Display section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Display {
    /// Back-end.
    pub kind: DisplayKind,
    /// Width in pixels.
    #[serde(default = "default_w")]
    pub width: u32,
    /// Height in pixels.
    #[serde(default = "default_h")]
    pub height: u32,
    /// Screen design: `colour` (240x160 and up) or `mono` (128x64 one-colour panels).
    #[serde(default)]
    pub layout: crate::display::Layout,
    /// The framebuffer device (`fbdev`).
    #[serde(default = "default_fb")]
    pub device: PathBuf,
    /// The I2C bus of an `ssd1306` panel.
    #[serde(default = "default_i2c")]
    pub bus: PathBuf,
    /// The panel's I2C address (0x3c, or 0x3d with its address pad bridged).
    #[serde(default = "default_oled_address")]
    pub address: u8,
}

fn default_i2c() -> PathBuf {
    PathBuf::from("/dev/i2c-1")
}

fn default_oled_address() -> u8 {
    0x3c
}

fn default_fb() -> PathBuf {
    PathBuf::from("/dev/fb0")
}

fn default_w() -> u32 {
    320
}
fn default_h() -> u32 {
    240
}

/// Telemetry section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Seconds between summary log lines.
    #[serde(default = "default_summary")]
    pub summary_every_s: u64,
}

fn default_summary() -> u64 {
    5
}

/// MQTT section: where the station publishes its events (docs/FLEET.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mqtt {
    /// Broker as `host` or `host:port` (port 1883 when left out).
    pub broker: String,
    /// Station name, the topics' prefix `anovit/<station>/`; the profile's name when left out.
    #[serde(default)]
    pub station: Option<String>,
    /// Client id; `anovit-<station>` when left out.
    #[serde(default)]
    pub client_id: Option<String>,
    /// QoS of events: 1 (at least once, the default) or 0 (at most once).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Messages kept while the broker is away; the oldest are dropped (and counted) beyond.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Seconds between counters messages.
    #[serde(default = "default_counters_every")]
    pub counters_every_s: u64,
    /// Publish a JPEG of each rejected part with its anomalies (one waits during an outage).
    #[serde(default)]
    pub thumbnails: bool,
    /// Keep-alive in seconds (at least 5).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// At exit, how long to go on sending what is waiting, in milliseconds.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Optional credentials.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default)]
    pub password: Option<String>,
}

fn default_qos() -> u8 {
    1
}
fn default_buffer() -> usize {
    10_000
}
fn default_counters_every() -> u64 {
    10
}
fn default_keep_alive() -> u64 {
    10
}
fn default_flush_ms() -> u64 {
    3000
}

impl Mqtt {
    /// The broker's host and port (`host`, `host:port`, `[v6 address]:port`).
    pub fn host_port(&self) -> std::result::Result<(String, u16), String> {
        let b = self.broker.trim();
        let (host, port) = match b.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((h, "")) => (h, None),
                Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or(p))),
                None => (b, None),
            },
            // A bare IPv6 address has several colons and no port.
            None => match b.split_once(':') {
                Some((h, p)) if !p.contains(':') => (h, Some(p)),
                _ => (b, None),
            },
        };
        if host.is_empty() {
            return Err("`mqtt.broker` must name a host, as \"broker.local\" or \"10.0.0.5:1883\"".into());
        }
        let port = match port {
            None => 1883,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("`mqtt.broker` port {p:?} must be a number 1..65535"))?,
        };
        Ok((host.to_string(), port))
    }

    /// The topics' station name: `station`, or the profile's name made topic-safe.
    pub fn station(&self, profile: &str) -> String {
        self.station.clone().unwrap_or_else(|| profile.replace(['/', '+', '#', ' ', '\0'], "-"))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        self.host_port()?;
        if self.qos > 1 {
            return Err(format!("`mqtt.qos` {} must be 0 or 1", self.qos));
        }
        if !(1..=1_000_000).contains(&self.buffer) {
            return Err(format!("`mqtt.buffer` {} must be 1..1000000 messages", self.buffer));
        }
        if !(1..=86_400).contains(&self.counters_every_s) {
            return Err(format!("`mqtt.counters_every_s` {} must be 1..86400", self.counters_every_s));
        }
        if !(5..=3600).contains(&self.keep_alive_s) {
            return Err(format!("`mqtt.keep_alive_s` {} must be 5..3600", self.keep_alive_s));
        }
        if self.flush_ms > 600_000 {
            return Err(format!("`mqtt.flush_ms` {} must be at most 600000", self.flush_ms));
        }
        let bad = |t: &str| t.is_empty() || t.contains(['/', '+', '#', '\0']);
        if self.station.as_deref().is_some_and(bad) {
            return Err("`mqtt.station` must be a non-empty name without '/', '+', '#'".into());
        }
        Ok(())
    }
}

/// Set-up page section (docs/FLEET.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Web {
    /// Address to listen on, as `127.0.0.1:8080` or `0.0.0.0:8080` (every interface).
    pub listen: String,
    /// With a token, the page may change the threshold (`Authorization: Bearer <token>`);
    /// without, it is read-only.
    #[serde(default)]
    pub token: Option<String>,
}

impl Web {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("`web.listen` {:?} must be an address and port, as \"0.0.0.0:8080\"", self.listen));
        }
        if self.token.as_deref().is_some_and(|t| t.len() < 8 || !t.bytes().all(|b| b.is_ascii_graphic())) {
            return Err("`web.token` must be at least 8 printable characters without spaces".into());
        }
        Ok(())
    }
}

/// A validated board profile.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Profile name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Camera.
    pub camera: Camera,
    /// Reject output.
    pub reject: Reject,
    /// Optional health/ready output.
    #[serde(default)]
    pub health: Option<Health>,
    /// Optional alarm output.
    #[serde(default)]
    pub alarm: Option<Alarm>,
    /// Optional part-present trigger (V4L2 cameras): one part per edge, instead of one per frame.
    #[serde(default)]
    pub trigger: Option<Input>,
    /// Optional belt encoder input: its edges are counted (reported in the summaries) and,
    /// with `[ejector]`, clock the parts to the ejector.
    #[serde(default)]
    pub encoder: Option<Input>,
    /// Optional ejector placement: the reject pulse fires when the part reaches the ejector
    /// (every part a reject until its pass arrives in time), instead of at the verdict.
    #[serde(default)]
    pub ejector: Option<EjectorPlacement>,
    /// Timing.
    pub timing: Timing,
    /// Display.
    pub display: Display,
    /// Telemetry.
    #[serde(default = "default_telemetry")]
    pub telemetry: Telemetry,
    /// Optional publishing to an MQTT broker.
    #[serde(default)]
    pub mqtt: Option<Mqtt>,
    /// Optional set-up page.
    #[serde(default)]
    pub web: Option<Web>,
}

fn default_telemetry() -> Telemetry {
    Telemetry { summary_every_s: default_summary() }
}

impl BoardProfile {
    /// Reads and validates a profile file; relative paths inside it are resolved against the
    /// file's folder.
    pub fn load(path: &Path) -> Result<BoardProfile> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let mut p = Self::parse(&text).map_err(|why| Error::Board { path: path.to_path_buf(), why })?;
        if let Some(f) = p.camera.folder.as_mut() {
            if f.is_relative() {
                *f = path.parent().unwrap_or(Path::new(".")).join(&*f);
            }
        }
        Ok(p)
    }

    /// Parses and validates an `[mqtt]` section alone (its TOML body).
    pub fn parse_mqtt(text: &str) -> std::result::Result<Mqtt, String> {
        let m: Mqtt = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        m.validate()?;
        Ok(m)
    }

    /// Parses and validates profile TOML.
    pub fn parse(text: &str) -> std::result::Result<BoardProfile, String> {
        let p: BoardProfile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let c = &self.camera;
        if c.source == SourceKind::Folder && c.folder.is_none() {
            return Err("`camera.folder` is required when `camera.source = \"folder\"`".into());
        }
        if !(0.0..=1.0).contains(&c.defect_rate) {
            return Err(format!("`camera.defect_rate` {} must be between 0 and 1", c.defect_rate));
        }
        if c.source == SourceKind::V4l2 {
            if c.device.as_deref().is_none_or(str::is_empty) {
                return Err("`camera.device` (a path such as \"/dev/video0\" or a card name) is required when `camera.source = \"v4l2\"`".into());
            }
            if !(16..=8192).contains(&c.width) || !(16..=8192).contains(&c.height) {
                return Err(format!("`camera.width` x `camera.height` {}x{} must each be 16..8192", c.width, c.height));
            }
            if !(1..=1000).contains(&c.fps) {
                return Err(format!("`camera.fps` {} must be between 1 and 1000", c.fps));
            }
            if !(2..=32).contains(&c.buffers) {
                return Err(format!("`camera.buffers` {} must be between 2 and 32", c.buffers));
            }
            if !(10..=60_000).contains(&c.timeout_ms) {
                return Err(format!("`camera.timeout_ms` {} must be between 10 and 60000", c.timeout_ms));
            }
        }
        if !(32..=4096).contains(&c.size) {
            return Err(format!("`camera.size` {} must be between 32 and 4096", c.size));
        }
        let r = &self.reject;
        if !(1..=10_000).contains(&r.pulse_ms) {
            return Err(format!("`reject.pulse_ms` {} must be between 1 and 10000", r.pulse_ms));
        }
        if r.output == OutputKind::Gpio && (r.chip.is_none() || r.line.is_none()) {
            return Err("`reject.chip` and `reject.line` are required when `reject.output = \"gpio\"`".into());
        }
        if !(1..=60_000).contains(&self.timing.result_deadline_ms) {
            return Err(format!(
                "`timing.result_deadline_ms` {} must be between 1 and 60000",
                self.timing.result_deadline_ms
            ));
        }
        let d = &self.display;
        if d.kind != DisplayKind::None && (!(64..=4096).contains(&d.width) || !(64..=4096).contains(&d.height)) {
            return Err(format!("`display.width` x `display.height` {}x{} must each be 64..4096", d.width, d.height));
        }
        if d.kind == DisplayKind::Ssd1306
            && ((d.width, d.height) != (128, 64) || d.layout != crate::display::Layout::Mono)
        {
            return Err("an `ssd1306` display is 128x64 with `layout = \"mono\"`: set `width = 128`, `height = 64`, `layout = \"mono\"`".into());
        }
        if let Some(t) = &self.trigger {
            if c.source != SourceKind::V4l2 {
                return Err("`[trigger]` needs a camera: `camera.source = \"v4l2\"`".into());
            }
            if t.delay_ms > 10_000 {
                return Err(format!("`trigger.delay_ms` {} must be at most 10000", t.delay_ms));
            }
        }
        if let Some(a) = &self.alarm {
            if !(1..=1000).contains(&a.raise_after) || !(1..=100_000).contains(&a.clear_after) {
                return Err(format!(
                    "`alarm.raise_after` {} must be 1..1000 and `alarm.clear_after` {} 1..100000",
                    a.raise_after, a.clear_after
                ));
            }
        }
        if self.encoder.as_ref().is_some_and(|e| e.delay_ms != 0) {
            return Err("`encoder.delay_ms` has no meaning: remove it".into());
        }
        if let Some(e) = &self.ejector {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if !positive(e.travel_mm) {
                return Err(format!("`ejector.travel_mm` {} must be a positive distance", e.travel_mm));
            }
            match (self.encoder.is_some(), e.counts_per_mm, e.belt_mm_per_s) {
                // Positions are u64 counts or microseconds, the travel is added to them: bounded,
                // it cannot overflow them in any run (no real belt is that long).
                (true, Some(c), _) if positive(c) => {
                    if e.travel_mm * c > MAX_TRAVEL_COUNTS {
                        return Err(format!(
                            "`ejector.travel_mm` {} x `ejector.counts_per_mm` {c} is more than {MAX_TRAVEL_COUNTS:e} encoder edges",
                            e.travel_mm
                        ));
                    }
                }
                (true, _, _) => {
                    return Err(
                        "`ejector.counts_per_mm` (encoder edges per mm of belt, > 0) is required with an `[encoder]`"
                            .into(),
                    )
                }
                (false, Some(_), _) => {
                    return Err(
                        "`ejector.counts_per_mm` needs an `[encoder]`; without one, give `ejector.belt_mm_per_s`"
                            .into(),
                    )
                }
                (false, None, Some(v)) if positive(v) => {
                    if e.travel_mm / v > MAX_TRAVEL_S {
                        return Err(format!(
                            "`ejector.travel_mm` {} at `ejector.belt_mm_per_s` {v} takes more than {MAX_TRAVEL_S} s",
                            e.travel_mm
                        ));
                    }
                    if e.lead_ms as f64 >= 1000.0 * e.travel_mm / v {
                        return Err(format!(
                            "`ejector.lead_ms` {} is not shorter than the part's travel time ({:.0} ms at {v} mm/s): the ejector would have to act before the camera sees the part",
                            e.lead_ms,
                            1000.0 * e.travel_mm / v
                        ));
                    }
                }
                (false, None, _) => {
                    return Err("`ejector.belt_mm_per_s` (> 0) is required without an `[encoder]`".into())
                }
            }
        }
        if self.telemetry.summary_every_s == 0 {
            return Err("`telemetry.summary_every_s` must be at least 1".into());
        }
        if let Some(m) = &self.mqtt {
            m.validate()?;
        }
        if let Some(w) = &self.web {
            w.validate()?;
        }
        Ok(())
    }

    /// Reject pulse width.
    pub fn pulse(&self) -> Duration {
        Duration::from_millis(self.reject.pulse_ms)
    }

    /// The V4L2 camera settings (`camera.source = "v4l2"`).
    #[cfg(feature = "hw-v4l")]
    pub fn v4l2_config(&self) -> crate::capture::v4l2::V4l2Config {
        let c = &self.camera;
        crate::capture::v4l2::V4l2Config {
            device: c.device.clone().unwrap_or_default(),
            format: c.format,
            width: c.width,
            height: c.height,
            fps: c.fps,
            buffers: c.buffers,
            timeout: Duration::from_millis(c.timeout_ms),
        }
    }

    /// The ejector's placement in belt positions (`[ejector]`), if there is one.
    pub fn placement(&self) -> Option<crate::ejector::Placement> {
        use crate::ejector::{Base, Placement};
        let e = self.ejector.as_ref()?;
        let lead = Duration::from_millis(e.lead_ms);
        Some(match (self.encoder.is_some(), e.counts_per_mm, e.belt_mm_per_s) {
            (true, Some(c), _) => Placement { base: Base::Encoder, travel: (e.travel_mm * c).round() as u64, lead },
            (_, _, v) => {
                Placement { base: Base::Time, travel: (1e6 * e.travel_mm / v.unwrap_or(1.0)).round() as u64, lead }
            }
        })
    }

    /// Result deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.timing.result_deadline_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "t"
[camera]
source = "synthetic"
[reject]
output = "recording"
pulse_ms = 40
[timing]
result_deadline_ms = 500
[display]
kind = "memory"
"#;

    #[test]
    fn parses_with_defaults() {
        let p = BoardProfile::parse(OK).unwrap();
        assert_eq!(p.camera.parts, 200);
        assert_eq!(p.reject.polarity, Polarity::ActiveHigh);
        assert_eq!(p.pulse(), Duration::from_millis(40));
    }

    #[test]
    fn screens_by_kind_with_their_layout() {
        let fb = OK.replace("kind = \"memory\"", "kind = \"fbdev\"\ndevice = \"/dev/fb1\"\nwidth = 480\nheight = 320");
        let p = BoardProfile::parse(&fb).unwrap();
        assert_eq!((p.display.kind, p.display.device.to_str()), (DisplayKind::Fbdev, Some("/dev/fb1")));
        assert_eq!(p.display.layout, crate::display::Layout::Colour);
        let oled = OK.replace(
            "kind = \"memory\"",
            "kind = \"ssd1306\"\nbus = \"/dev/i2c-3\"\naddress = 0x3d\nwidth = 128\nheight = 64\nlayout = \"mono\"",
        );
        let p = BoardProfile::parse(&oled).unwrap();
        assert_eq!((p.display.kind, p.display.address), (DisplayKind::Ssd1306, 0x3d));
        let wrong = oled.replace("layout = \"mono\"", "layout = \"colour\"");
        assert!(BoardProfile::parse(&wrong).unwrap_err().contains("layout = \"mono\""));
        let wrong = oled.replace("width = 128", "width = 320");
        assert!(BoardProfile::parse(&wrong).unwrap_err().contains("128x64"));
    }

    #[test]
    fn mqtt_broker_address_and_limits() {
        let with = |m: &str| BoardProfile::parse(&format!("{OK}\n[mqtt]\n{m}\n"));
        for (broker, host, port) in [
            ("broker.local", "broker.local", 1883),
            ("10.0.0.5:1884", "10.0.0.5", 1884),
            ("[::1]:1885", "::1", 1885),
            ("fe80::1", "fe80::1", 1883),
        ] {
            let p = with(&format!("broker = {broker:?}")).unwrap();
            let m = p.mqtt.unwrap();
            assert_eq!(m.host_port().unwrap(), (host.to_string(), port), "{broker}");
            assert_eq!((m.qos, m.buffer, m.station(&p.name)), (1, 10_000, p.name.clone()));
        }
        for (m, why) in [
            ("broker = \"host:0\"", "port"),
            ("broker = \"host:http\"", "port"),
            ("broker = \":1883\"", "must name a host"),
            ("broker = \"h\"\nqos = 2", "0 or 1"),
            ("broker = \"h\"\nbuffer = 0", "mqtt.buffer"),
            ("broker = \"h\"\nstation = \"a/b\"", "mqtt.station"),
            ("broker = \"h\"\nkeep_alive_s = 1", "keep_alive_s"),
            ("brokr = \"h\"", "unknown field"),
        ] {
            let e = with(m).unwrap_err();
            assert!(e.contains(why), "{m}: {e}");
        }
        let web = |w: &str| BoardProfile::parse(&format!("{OK}\n[web]\n{w}\n"));
        assert!(web("listen = \"0.0.0.0:8080\"\ntoken = \"s3cret-token\"").unwrap().web.is_some());
        assert!(web("listen = \"8080\"").unwrap_err().contains("web.listen"));
        assert!(web("listen = \"127.0.0.1:8080\"\ntoken = \"short\"").unwrap_err().contains("web.token"));
        let named = with("broker = \"h\"").unwrap().mqtt.unwrap();
        assert_eq!(named.station("line 3/cam#1"), "line-3-cam-1");
    }

    #[test]
    fn every_shipped_profile_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("board");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                BoardProfile::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "host demo, Pi 4, Pi 5, Jetson: found {n}");
    }

    #[test]
    fn camera_and_gpio_lines_by_name_or_number() {
        let text = OK.replace(
            "source = \"synthetic\"",
            "source = \"v4l2\"\ndevice = \"HD Pro Webcam\"\nformat = \"mjpeg\"\nwidth = 1280\nheight = 720\nfps = 30",
        ) + "[health]\nchip = \"pinctrl-bcm2711\"\nline = \"GPIO27\"\nactive_low = true\n";
        let text = text.replace("output = \"recording\"", "output = \"gpio\"\nchip = \"/dev/gpiochip0\"\nline = 17");
        let p = BoardProfile::parse(&text).unwrap();
        assert_eq!((p.camera.source, p.camera.format), (SourceKind::V4l2, Some(CameraFormat::Mjpeg)));
        assert_eq!((p.camera.width, p.camera.height, p.camera.fps, p.camera.buffers), (1280, 720, 30, 4));
        assert_eq!(p.reject.line, Some(LineSpec::Offset(17)));
        let h = p.health.unwrap();
        assert_eq!((h.line, h.active_low), (LineSpec::Name("GPIO27".into()), true));
    }

    #[test]
    fn ejector_placement_by_clock_or_encoder() {
        use crate::ejector::{Base, Placement};
        let p =
            BoardProfile::parse(&format!("{OK}[ejector]\ntravel_mm = 800.0\nlead_ms = 30\nbelt_mm_per_s = 500.0\n"))
                .unwrap();
        let lead = Duration::from_millis(30);
        assert_eq!(p.placement(), Some(Placement { base: Base::Time, travel: 1_600_000, lead }), "800 mm at 500 mm/s");
        let text = format!(
            "{OK}[encoder]\nchip = \"gpiochip0\"\nline = 5\n[ejector]\ntravel_mm = 800.0\nlead_ms = 30\ncounts_per_mm = 2.5\n"
        );
        let p = BoardProfile::parse(&text).unwrap();
        assert_eq!(p.placement(), Some(Placement { base: Base::Encoder, travel: 2000, lead }));
        assert_eq!(BoardProfile::parse(OK).unwrap().placement(), None);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (OK.replace("pulse_ms = 40", "pulse_ms = 0"), "reject.pulse_ms"),
            (OK.replace("source = \"synthetic\"", "source = \"folder\""), "camera.folder"),
            (OK.replace("source = \"synthetic\"", "source = \"webcam\""), "webcam"),
            (OK.replace("output = \"recording\"", "output = \"gpio\""), "reject.chip"),
            (OK.replace("pulse_ms = 40", "pulse_ms = 40\npulse_width = 3"), "pulse_width"),
            (OK.replace("result_deadline_ms = 500", "result_deadline_ms = 0"), "timing.result_deadline_ms"),
            (OK.replace("[timing]\nresult_deadline_ms = 500\n", ""), "timing"),
            (OK.replace("source = \"synthetic\"", "source = \"v4l2\""), "camera.device"),
            (
                OK.replace("source = \"synthetic\"", "source = \"v4l2\"\ndevice = \"/dev/video0\"\nfps = 0"),
                "camera.fps",
            ),
            (OK.replace("source = \"synthetic\"", "source = \"v4l2\"\ndevice = \"x\"\nformat = \"nv12\""), "nv12"),
            (OK.replace("source = \"synthetic\"", "source = \"v4l2\"\ndevice = \"x\"\nbuffers = 1"), "camera.buffers"),
            (format!("{OK}[health]\nchip = \"gpiochip0\"\n"), "line"),
            (format!("{OK}[trigger]\nchip = \"gpiochip0\"\nline = 4\n"), "`[trigger]` needs a camera"),
            (format!("{OK}[encoder]\nchip = \"gpiochip0\"\nline = 5\nedge = \"up\"\n"), "up"),
            (format!("{OK}[ejector]\ntravel_mm = 0.0\nbelt_mm_per_s = 500.0\n"), "ejector.travel_mm"),
            (format!("{OK}[ejector]\ntravel_mm = 800.0\n"), "ejector.belt_mm_per_s"),
            (format!("{OK}[ejector]\ntravel_mm = 800.0\ncounts_per_mm = 4.0\n"), "needs an `[encoder]`"),
            (format!("{OK}[encoder]\nchip = \"c\"\nline = 5\n[ejector]\ntravel_mm = 800.0\n"), "ejector.counts_per_mm"),
            (format!("{OK}[ejector]\ntravel_mm = 100.0\nbelt_mm_per_s = 1000.0\nlead_ms = 100\n"), "ejector.lead_ms"),
            (format!("{OK}[ejector]\ntravel_mm = 1e30\nbelt_mm_per_s = 500.0\n"), "ejector.travel_mm"),
            (
                format!("{OK}[encoder]\nchip = \"c\"\nline = 5\n[ejector]\ntravel_mm = 1e4\ncounts_per_mm = 1e9\n"),
                "edges",
            ),
        ];
        for (text, key) in cases {
            let e = BoardProfile::parse(&text).unwrap_err();
            assert!(e.contains(key), "{e:?} should mention {key}");
        }
    }
}
