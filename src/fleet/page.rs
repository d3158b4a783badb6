//! The set-up page: a small HTTP server on its own thread (tiny_http) that shows the live frame
//! with the ROI and the anomaly map, counters, the threshold and recent rejects
//! ([`super::scene::Scene`]). Read-only unless a token is configured; then `POST /threshold`
//! with `Authorization: Bearer <token>` sets the threshold from the next part.
//!
//! Routes: `GET /` (the page), `GET /frame.png` (live), `GET /reject.png` (the last part
//! rejected on its score among the frames shown), `GET /status.json`, `POST /threshold` (body:
//! the number).

use std::io::Read;
use std::sync::Arc;
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

use super::scene::Scene;

const PAGE: &str = include_str!("page.html");

/// What the page says about the station.
#[derive(Clone, Debug)]
pub struct Station {
    /// Board profile name.
    pub board: String,
    /// Model name.
    pub model: String,
}

/// A running page server.
pub struct Page {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    /// The address it listens on.
    pub addr: String,
}

impl Page {
    /// Listens on `addr` (`host:port`). With `token`, threshold changes are allowed to whoever
    /// presents it.
    pub fn start(addr: &str, token: Option<String>, scene: Arc<Scene>, station: Station) -> Result<Page, String> {
        let server = Arc::new(Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?);
        let bound = server.server_addr().to_ip().map_or_else(|| addr.to_string(), |a| a.to_string());
        let s = server.clone();
        let thread = std::thread::Builder::new()
            .name("setup-page".into())
            .spawn(move || {
                for req in s.incoming_requests() {
                    serve(req, &scene, token.as_deref(), &station);
                }
            })
            .map_err(|e| format!("cannot start the set-up page thread: {e}"))?;
        Ok(Page { server, thread: Some(thread), addr: bound })
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn text(code: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body).with_status_code(code).with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn serve(mut req: Request, scene: &Scene, token: Option<&str>, station: &Station) {
    scene.watched();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let resp = match (req.method(), path.as_str()) {
        (Method::Get, "/") => {
            Response::from_string(PAGE).with_header(header("Content-Type", "text/html; charset=utf-8"))
        }
        (Method::Get, "/frame.png") => picture_png(scene, false),
        (Method::Get, "/reject.png") => picture_png(scene, true),
        (Method::Get, "/status.json") => status_json(scene, token.is_some(), station),
        (Method::Post, "/threshold") => {
            let auth =
                req.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
            let mut body = String::new();
            let read = req.as_reader().take(64).read_to_string(&mut body);
            match (token, auth.as_deref().and_then(|a| a.strip_prefix("Bearer "))) {
                (None, _) => text(403, "read-only: set `token` in the profile's [web] section to allow changes\n"),
                (Some(t), Some(given)) if read.is_ok() && constant_time_eq(t.as_bytes(), given.as_bytes()) => {
                    match body.trim().parse::<f32>() {
                        Ok(v) if v.is_finite() && v > 0.0 => {
                            scene.request_threshold(v);
                            log::warn!("set-up page: threshold set to {v} (from the next part)");
                            text(200, &format!("threshold {v} from the next part\n"))
                        }
                        _ => text(400, "the body must be the new threshold, a positive number\n"),
                    }
                }
                _ => text(401, "wrong or missing token (Authorization: Bearer <token>)\n"),
            }
        }
        _ => text(404, "not found: / , /frame.png , /reject.png , /status.json , POST /threshold\n"),
    };
    let _ = req.respond(resp);
}

/// Token comparison that does not stop at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn picture_png(scene: &Scene, reject: bool) -> Response<std::io::Cursor<Vec<u8>>> {
    let picture = |v: &super::scene::View| {
        let p = if reject { &v.reject } else { &v.live };
        (p.width > 0).then(|| (p.composite(), p.width, p.height))
    };
    let Some((rgb, w, h)) = scene.read(picture) else {
        return text(503, if reject { "no reject seen yet\n" } else { "no frame yet\n" });
    };
    let mut png = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut png);
    match image::ImageEncoder::write_image(enc, &rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8) {
        Ok(()) => Response::from_data(png)
            .with_header(header("Content-Type", "image/png"))
            .with_header(header("Cache-Control", "no-store")),
        Err(e) => text(500, &format!("cannot encode the frame: {e}\n")),
    }
}

fn status_json(scene: &Scene, changes_allowed: bool, station: &Station) -> Response<std::io::Cursor<Vec<u8>>> {
    let body = scene.read(|v| {
        serde_json::json!({
            "board": station.board,
            "model": station.model,
            "threshold": v.threshold,
            "fps": v.fps,
            "counters": v.counters,
            "last": v.last.map(|(seq, score, verdict)| serde_json::json!({"seq": seq, "score": score.filter(|s| s.is_finite()), "verdict": verdict})),
            "live": caption(&v.live),
            "reject": caption(&v.reject),
            "roi": v.live.roi,
            "recent": v.recent.iter().collect::<Vec<_>>(),
            "changes_allowed": changes_allowed,
        })
    });
    Response::from_string(body.to_string())
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

fn caption(p: &super::scene::Picture) -> serde_json::Value {
    match p.part {
        Some((seq, score, verdict)) => serde_json::json!({"seq": seq, "score": score, "verdict": verdict}),
        None => serde_json::Value::Null,
    }
}
