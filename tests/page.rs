//! The set-up page of `anovit run`, in a real browser (Debian's `chromium`, headless, which the
//! test command installs): live frames and the last reject's picture with its anomaly map load
//! and keep coming, the counters and recent rejects fill in; read-only without a token, the
//! threshold set with it (and used by the loop from the next part).
//!
//! `ANOVIT_BLESS=1` also writes the browser's screenshot to docs/setup-page.png.
#![cfg(feature = "web")]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{endless_demo_board, repo, KillOnDrop};

/// `anovit run` on the endless host demo with `[web]` settings `web`, and its address.
fn start(dir: &Path, web: &str, events: &Path) -> (KillOnDrop, String) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let board = endless_demo_board(dir, &format!("[web]\nlisten = {addr:?}\n{web}"));
    let child = Command::new(env!("CARGO_BIN_EXE_anovit"))
        .args(["run", "-q", "--board"])
        .arg(&board)
        .arg("--events")
        .arg(events)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.err")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "the set-up page did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (KillOnDrop(child), addr)
}

/// One HTTP/1.0 request: status code and body.
fn http(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response");
    let head = String::from_utf8_lossy(&out[..split]);
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, out[split + 4..].to_vec())
}

fn status(addr: &str) -> serde_json::Value {
    let (code, body) = http(addr, "GET", "/status.json", "", "");
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.exists())
        .expect("chromium is not installed: `apt install chromium` (scripts/test.sh does it as root)")
}

/// Headless Chromium on the page for `budget_ms` of page time, then `what` (`--dump-dom` or
/// `--screenshot=FILE`).
fn browse(url: &str, what: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--window-size=1200,900", &format!("--virtual-time-budget={budget_ms}"), what, url])
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The number in `data-NAME="N"` on the body.
fn body_data(dom: &str, name: &str) -> u64 {
    let key = format!("data-{name}=\"");
    let i = dom.find(&key).unwrap_or_else(|| panic!("no {key} in the page")) + key.len();
    dom[i..].split('"').next().unwrap().parse().unwrap()
}

#[test]
fn the_page_shows_live_frames_and_the_last_reject_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_run, addr) = start(dir.path(), "", &dir.path().join("events.jsonl"));
    let url = format!("http://{addr}/");
    // Let the demo judge some parts (a quarter are defective) with the page watched.
    let t = Instant::now();
    while status(&addr)["reject"].is_null() {
        assert!(t.elapsed() < Duration::from_secs(120), "no reject shown on the page");
        std::thread::sleep(Duration::from_millis(200));
    }
    let dom = browse(&url, "--dump-dom", 6000);
    assert!(body_data(&dom, "frames") >= 3, "live frames keep loading: {}", body_data(&dom, "frames"));
    assert!(body_data(&dom, "status") >= 3, "the status keeps updating");
    assert!(body_data(&dom, "rejects") >= 1, "the last reject's picture loaded");
    assert!(dom.contains("host-demo / demo-edge-f32"), "the station is named");
    assert!(dom.contains("<td class=\"NG\">NG</td>"), "recent rejects are listed");
    assert!(dom.contains("id=\"set\" hidden"), "no threshold form without a token");

    // The pictures: the frame scaled, the ROI outlined, heat where the reject's anomaly is.
    let s = status(&addr);
    let (code, png) = http(&addr, "GET", "/reject.png", "", "");
    assert_eq!(code, 200);
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (256, 256), "the demo camera's 256 x 256 frame");
    assert_eq!(img.get_pixel(0, 128).0, [255, 200, 0], "the ROI (whole frame) is outlined");
    // The demo's parts are grey, black and blue: red is the anomaly map's.
    let hot = img.pixels().filter(|p| p.0[0] > 150 && p.0[1] < 90 && p.0[2] < 90).count();
    assert!(hot > 20, "the reject (score {}) shows heat: {hot} red pixels", s["reject"]["score"]);
    let (code, _) = http(&addr, "GET", "/frame.png", "", "");
    assert_eq!(code, 200);

    let shot = dir.path().join("page.png");
    browse(&url, &format!("--screenshot={}", shot.display()), 4000);
    let page = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(page.dimensions(), (1200, 900));
    // The live frame sits top left: not the page's flat background there.
    let region: Vec<[u8; 3]> =
        (100..400).flat_map(|y| (40..600).map(move |x| (x, y))).map(|(x, y)| page.get_pixel(x, y).0).collect();
    let distinct: std::collections::BTreeSet<[u8; 3]> = region.iter().copied().collect();
    assert!(distinct.len() > 50, "the screenshot shows a picture where the frame is: {} colours", distinct.len());
    if std::env::var_os("ANOVIT_BLESS").is_some() {
        std::fs::copy(&shot, repo().join("docs/setup-page.png")).unwrap();
    }

    // Read-only: no changes without a token.
    let (code, body) = http(&addr, "POST", "/threshold", "", "0.5");
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("read-only"));
    assert_eq!(http(&addr, "GET", "/nothing", "", "").0, 404);
}

#[test]
fn with_a_token_the_threshold_can_be_set_and_is_used_from_the_next_part() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let (run, addr) = start(dir.path(), "token = \"test-token-42\"\n", &events);
    assert_eq!(status(&addr)["changes_allowed"], true);
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert_eq!(http(&addr, "POST", "/threshold", "", "50").0, 401, "no token");
    assert_eq!(http(&addr, "POST", "/threshold", &bearer("test-token-41"), "50").0, 401, "wrong token");
    assert_eq!(http(&addr, "POST", "/threshold", &bearer("test-token-42"), "-1").0, 400, "not a threshold");
    assert_eq!(http(&addr, "POST", "/threshold", &bearer("test-token-42"), "NaN").0, 400, "not a threshold");
    let (code, body) = http(&addr, "POST", "/threshold", &bearer("test-token-42"), "50");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let t = Instant::now();
    while status(&addr)["threshold"] != 50.0 {
        assert!(t.elapsed() < Duration::from_secs(60), "the loop did not take the new threshold");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Some parts at the new threshold, then stop (SIGTERM: a clean exit).
    let seen = status(&addr)["last"]["seq"].as_u64().unwrap();
    while status(&addr)["last"]["seq"].as_u64().unwrap() < seen + 20 {
        assert!(t.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut run = run;
    unsafe { libc::kill(run.0.id() as i32, libc::SIGTERM) };
    assert!(run.0.wait().unwrap().success());
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(&events).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let first = log.iter().position(|e| e["threshold"] == 50.0).expect("parts judged at the new threshold");
    assert!(first > 0 && log[..first].iter().all(|e| e["threshold"] != 50.0));
    assert!(log[first..].iter().all(|e| e["threshold"] == 50.0), "the threshold stays set");
    // Scores of the demo's defects are far below 50: from there on every scored part passes.
    assert!(log[first..].iter().all(|e| e["verdict"] != "NG"));
    let err = std::fs::read_to_string(dir.path().join("run.err")).unwrap();
    assert!(err.contains("threshold set to 50"), "the change is logged:\n{err}");
}
