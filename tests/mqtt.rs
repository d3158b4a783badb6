//! Publishing to a real Mosquitto broker (Debian's `mosquitto` and `mosquitto-clients`, which
//! the test command installs), started by the tests on loopback: `anovit run` publishes, an
//! independent client (`mosquitto_sub`, persistent session) receives.
//!
//! The broker is stopped for 30 s in the middle of a run and started again: every part event
//! must arrive once it is back; with a small buffer, the oldest are dropped, counted, and only
//! they are missing.
#![cfg(feature = "mqtt")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{endless_demo_board, repo, KillOnDrop};

/// A Mosquitto broker on a free loopback port, with persistence (the subscriber's session and
/// its queued messages survive a restart, as on a plant broker).
struct Broker {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        // The free port is probed, then given to Mosquitto: another test may take it in between
        // (tests run in parallel), and Mosquitto then exits; a fresh port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            // As root, Mosquitto would switch to its own user, who cannot write the test's folder.
            let user = if unsafe { libc::geteuid() } == 0 { "user root\n" } else { "" };
            let conf = format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\n{user}",
                dir.display()
            );
            std::fs::write(dir.join("mosquitto.conf"), conf).unwrap();
            let mut b = Broker { dir: dir.to_path_buf(), port, child: None };
            if b.launch() {
                return b;
            }
        }
        panic!("mosquitto found no free port: see {}", dir.join("broker.log").display());
    }

    fn restart(&mut self) {
        assert!(self.launch(), "mosquitto did not start again on {}: see {}", self.port, self.dir.display());
    }

    /// Starts Mosquitto; true once it says it runs and accepts on the port (a listener of another
    /// test on a taken port would accept too), false when it exited (the port was taken).
    fn launch(&mut self) -> bool {
        let log_path = self.dir.join("broker.log");
        let runs = || std::fs::read_to_string(&log_path).unwrap_or_default().matches(" running").count();
        let before = runs();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let mut child = Command::new(mosquitto())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start mosquitto");
        let t = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if runs() > before && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it as an operator would (SIGTERM: it saves its sessions and exits).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().unwrap();
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mosquitto() -> &'static str {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("mosquitto is not installed: `apt install mosquitto mosquitto-clients` (scripts/test.sh does it as root)");
}

/// `mosquitto_sub` on every station topic, QoS 1, persistent session: one line per message,
/// topic and payload in hex (thumbnails are binary).
struct Subscriber {
    child: Child,
    out: PathBuf,
}

impl Subscriber {
    fn start(broker: &Broker, out: &Path) -> Subscriber {
        let file = std::fs::File::create(out).unwrap();
        let child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-c"])
            // One client id per broker: two subscribers with one id on one broker would take turns.
            .args(["-i", &format!("anovit-test-sub-{}", broker.port)])
            .args(["-t", "anovit/#", "-F", "%t %x"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start mosquitto_sub (apt install mosquitto-clients)");
        // Its session must exist before anything is published.
        std::thread::sleep(Duration::from_millis(500));
        Subscriber { child, out: out.to_path_buf() }
    }

    /// Messages received so far: (topic, payload).
    fn messages(&self) -> Vec<(String, Vec<u8>)> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(t, hex)| {
                let bytes =
                    (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
                (t.to_string(), bytes)
            })
            .collect()
    }

    /// Part `seq`s received (each counted once: QoS 1 may deliver twice after an outage).
    fn part_seqs(&self) -> BTreeSet<u64> {
        self.messages()
            .iter()
            .filter(|(t, _)| t.ends_with("/part"))
            .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).unwrap()["seq"].as_u64().unwrap())
            .collect()
    }

    fn wait_for_parts(&self, n: usize, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            if self.part_seqs().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host demo as an endless line, publishing with `mqtt` settings.
fn board(dir: &Path, mqtt: &str) -> PathBuf {
    endless_demo_board(dir, &format!("[mqtt]\n{mqtt}"))
}

/// `anovit run` on `board` publishing to `broker` (an address), writing its event log.
fn start_run(board: &Path, broker: &str, events: &Path, stderr: &Path) -> KillOnDrop {
    let child = Command::new(env!("CARGO_BIN_EXE_anovit"))
        .args(["run", "-q", "--board"])
        .arg(board)
        .args(["--mqtt", broker, "--events"])
        .arg(events)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Stops the run with SIGTERM (a clean exit) and returns its log.
fn stop_run(mut run: KillOnDrop, stderr: &Path) -> String {
    unsafe { libc::kill(run.0.id() as i32, libc::SIGTERM) };
    let status = run.0.wait().unwrap();
    let err = std::fs::read_to_string(stderr).unwrap();
    assert!(status.success(), "anovit run failed: {status}\n{err}");
    err
}

/// The event log's parts: seq -> event (complete lines only: the run may be writing).
fn events(path: &Path) -> BTreeMap<u64, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["seq"].as_u64().unwrap(), v))
        .collect()
}

/// The publisher's final totals from its log line.
fn totals(stderr: &str) -> BTreeMap<&'static str, u64> {
    let line = stderr
        .lines()
        .find(|l| l.contains("message(s) queued"))
        .unwrap_or_else(|| panic!("no mqtt totals in:\n{stderr}"));
    let num = |after: &str| -> u64 {
        let i = line.find(after).unwrap_or_else(|| panic!("{after:?} not in {line}"));
        line[..i].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    };
    BTreeMap::from([
        ("queued", num(" message(s) queued")),
        ("delivered", num(" delivered")),
        ("dropped", num(" dropped")),
        ("unsent", num(" unsent")),
    ])
}

#[test]
fn every_event_arrives_after_the_broker_is_stopped_for_30_s() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let sub = Subscriber::start(&broker, &dir.path().join("sub.txt"));
    let board = board(
        dir.path(),
        "broker = \"ignored:1\"\nstation = \"line-1\"\nthumbnails = true\ncounters_every_s = 2\nflush_ms = 20000\n",
    );
    let (ev, err) = (dir.path().join("events.jsonl"), dir.path().join("run.err"));
    let run = start_run(&board, &broker.address(), &ev, &err);
    assert!(sub.wait_for_parts(20, Duration::from_secs(120)), "no part events arrived with the broker up");

    broker.stop();
    let before = events(&ev).len();
    std::thread::sleep(Duration::from_secs(30));
    let during = events(&ev).len() - before;
    broker.restart();
    std::thread::sleep(Duration::from_secs(3));
    let stderr = stop_run(run, &err);

    let log = events(&ev);
    assert!(during >= 10, "the loop went on while the broker was away ({during} parts in 30 s)");
    assert!(sub.wait_for_parts(log.len(), Duration::from_secs(60)), "parts missing at the subscriber");
    assert_eq!(sub.part_seqs(), log.keys().copied().collect(), "every part event, no other");
    let t = totals(&stderr);
    assert_eq!((t["dropped"], t["unsent"]), (0, 0), "{stderr}");
    assert!(t["delivered"] >= log.len() as u64, "{t:?}");
    assert!(stderr.contains("connected again"), "the reconnection is logged:\n{stderr}");
    assert!(!log.values().any(|e| e["verdict"] == "FAULT"), "no part faulted for the outage");

    let msgs = sub.messages();
    // Faults: none here. Counters: periodic, with the outbox's totals.
    let counters: Vec<serde_json::Value> = msgs
        .iter()
        .filter(|(t, _)| t == "anovit/line-1/counters")
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    assert!(counters.len() >= 10, "counters every 2 s over ~40 s: {}", counters.len());
    assert!(counters.iter().all(|c| c["counters"]["frames"].as_u64().is_some() && c["outbox"]["queued"].is_u64()));
    assert!(counters.iter().all(|c| c["health"]["camera_ok"] == true && c["health"]["alarm"] == false), "{counters:?}");
    // Thumbnails: JPEGs of parts the log rejected on their score.
    let thumbs: Vec<(u64, &Vec<u8>)> = msgs
        .iter()
        .filter_map(|(t, p)| t.strip_prefix("anovit/line-1/thumbnail/").map(|s| (s.parse().unwrap(), p)))
        .collect();
    assert!(!thumbs.is_empty(), "reject thumbnails were published");
    for (seq, jpeg) in thumbs {
        assert_eq!(log[&seq]["verdict"], "NG", "thumbnail of part {seq}");
        let img = image::load_from_memory(jpeg).unwrap();
        assert_eq!((img.width(), img.height()), (224, 224));
    }
    // Status: retained online on connecting, offline on a clean exit (last).
    let status: Vec<serde_json::Value> = msgs
        .iter()
        .filter(|(t, _)| t == "anovit/line-1/status")
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    assert_eq!(status.first().map(|s| s["state"].clone()), Some("online".into()), "{status:?}");
    assert_eq!(status.last().map(|s| s["state"].clone()), Some("offline".into()), "{status:?}");
}

/// A TCP relay to the broker that can act as a pulled cable: while cut, bytes both ways are
/// swallowed (nothing is refused, nothing answers), as when a link dies without a reset; when
/// the cut ends, the connections that lived through it are closed.
struct Link {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    fn start(to: u16) -> Link {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Even: up, odd: cut; each change is a new generation.
        let cut = Arc::new(AtomicU64::new(0));
        let state = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let born = state.load(Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let state = state.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                        loop {
                            let now = state.load(Ordering::SeqCst);
                            // A connection that saw a cut end is dead.
                            if now > born + 1 || (born % 2 == 1 && now != born) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                Ok(n) if now.is_multiple_of(2) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Ok(_) => {} // cut: swallowed
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Link { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        let g = self.cut.load(std::sync::atomic::Ordering::SeqCst);
        if (g % 2 == 1) != cut {
            self.cut.store(g + 1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

#[test]
fn messages_in_flight_when_the_link_dies_are_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path());
    let sub = Subscriber::start(&broker, &dir.path().join("sub.txt"));
    let link = Link::start(broker.port);
    let board =
        board(dir.path(), "broker = \"ignored:1\"\nkeep_alive_s = 5\ncounters_every_s = 3600\nflush_ms = 20000\n");
    let (ev, err) = (dir.path().join("events.jsonl"), dir.path().join("run.err"));
    let run = start_run(&board, &format!("127.0.0.1:{}", link.port), &ev, &err);
    assert!(sub.wait_for_parts(10, Duration::from_secs(120)), "no part events arrived through the link");
    // Published into the dead link until the keep-alive notices (5 to 7.5 s): sent, never
    // acknowledged, lost unless sent again.
    link.set_cut(true);
    std::thread::sleep(Duration::from_secs(15));
    link.set_cut(false);
    std::thread::sleep(Duration::from_secs(4));
    let stderr = stop_run(run, &err);
    let log = events(&ev);
    assert!(sub.wait_for_parts(log.len(), Duration::from_secs(60)), "parts missing at the subscriber:\n{stderr}");
    assert_eq!(sub.part_seqs(), log.keys().copied().collect(), "every part event, no other");
    let t = totals(&stderr);
    assert_eq!((t["dropped"], t["unsent"]), (0, 0), "{stderr}");
    assert!(stderr.contains("connected again; sending"), "{stderr}");
}

#[test]
fn a_full_buffer_drops_the_oldest_events_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path());
    let sub = Subscriber::start(&broker, &dir.path().join("sub.txt"));
    let board = board(dir.path(), "broker = \"ignored:1\"\nbuffer = 25\ncounters_every_s = 3600\nflush_ms = 20000\n");
    let (ev, err) = (dir.path().join("events.jsonl"), dir.path().join("run.err"));
    let run = start_run(&board, &broker.address(), &ev, &err);
    assert!(sub.wait_for_parts(10, Duration::from_secs(120)), "no part events arrived with the broker up");
    broker.stop();
    let before = events(&ev).len();
    let t = Instant::now();
    // Long enough for well over 25 parts, even on a slow machine.
    while events(&ev).len() < before + 80 {
        assert!(t.elapsed() < Duration::from_secs(120), "the loop stalled while the broker was away");
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.restart();
    std::thread::sleep(Duration::from_secs(3));
    let stderr = stop_run(run, &err);

    let log = events(&ev);
    let t = totals(&stderr);
    assert!(t["dropped"] >= 50, "{t:?}");
    assert_eq!(t["queued"], t["delivered"] + t["dropped"] + t["unsent"], "every message delivered or counted: {t:?}");
    assert_eq!(t["unsent"], 0, "{stderr}");
    let n = log.len() - t["dropped"] as usize;
    assert!(sub.wait_for_parts(n, Duration::from_secs(60)), "delivered parts missing at the subscriber");
    let got = sub.part_seqs();
    let missing: Vec<u64> = log.keys().copied().filter(|s| !got.contains(s)).collect();
    assert_eq!(missing.len() as u64, t["dropped"], "only part events here: each dropped one is missing");
    // The oldest went: one run of consecutive parts, and the newest of the outage arrived.
    assert_eq!(missing.last().unwrap() - missing[0] + 1, missing.len() as u64, "{missing:?}");
    // What the ring held when the broker came back (its 25 newest) arrived.
    let kept = missing.last().unwrap() + 1..=missing.last().unwrap() + 25;
    assert!(kept.clone().all(|s| got.contains(&s)), "the newest events are the ones kept: {kept:?}");
}

#[test]
fn without_a_broker_the_line_runs_and_says_what_was_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let board = board(dir.path(), &format!("broker = \"127.0.0.1:{port}\"\nflush_ms = 500\n"));
    let o = Command::new(env!("CARGO_BIN_EXE_anovit"))
        .args(["run", "-q", "--parts", "12", "--board"])
        .arg(&board)
        .current_dir(repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("12 parts") || String::from_utf8_lossy(&o.stdout).contains("12 parts"));
    assert!(err.contains("broker refused the connection"), "{err}");
    let t = totals(&err);
    assert_eq!(t["delivered"], 0);
    assert!(t["unsent"] >= 12, "every part event still waiting is reported: {t:?}");
}
