//! The MQTT publisher: a thread that sends the [`Outbox`] to a broker (rumqttc, MQTT 3.1.1).
//!
//! Delivery is at least once for QoS 1: the publisher keeps its own copy of every message until
//! the broker acknowledges it, and sends the unacknowledged ones again after a reconnection
//! (the session is clean, so the client library forgets them). A message can therefore arrive
//! twice after an outage; every part event carries its `seq` to tell. While the broker is away
//! messages wait in the outbox (the loop goes on at its own pace); when it is full the oldest
//! are dropped and counted.
//!
//! Topics, under `anovit/<station>/`: `status` (retained `online` / `offline`, the latter as the
//! last will), `part`, `fault`, `counters`, `alarm`, `thumbnail/<seq>` (JPEG).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError};

use super::{Kind, Outbox, OutboxTotals};
use crate::board::Mqtt as Settings;

/// Messages sent and not yet acknowledged, at most.
const WINDOW: usize = 64;

/// A message handed to the client library and kept until the broker acknowledges it.
struct Sent {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    qos: QoS,
    /// Assigned by the library when it writes the message (in the order they were handed over).
    pkid: Option<u16>,
    thumbnail: bool,
}

/// A running publisher.
pub struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    outbox: Arc<Outbox>,
    broker: String,
}

impl Publisher {
    /// Starts publishing `outbox` to the broker of `settings`, as station `station` (its
    /// topics' prefix). `online` is the retained status payload (what the station runs).
    pub fn start(settings: &Settings, station: &str, online: String, outbox: Arc<Outbox>) -> std::io::Result<Self> {
        let (host, port) = settings.host_port().map_err(std::io::Error::other)?;
        let prefix = format!("anovit/{station}");
        let id = settings.client_id.clone().unwrap_or_else(|| format!("anovit-{station}"));
        let mut opts = MqttOptions::new(id, host.clone(), port);
        opts.set_keep_alive(Duration::from_secs(settings.keep_alive_s.max(5)))
            .set_clean_session(true)
            .set_inflight(WINDOW as u16 + 8)
            .set_request_channel_capacity(2 * WINDOW)
            // Thumbnails are tens of kilobytes; the library's default limit is 10 kB.
            .set_max_packet_size(64 * 1024, 4 * 1024 * 1024)
            .set_last_will(LastWill::new(format!("{prefix}/status"), r#"{"state":"offline"}"#, QoS::AtLeastOnce, true));
        if let Some(user) = &settings.username {
            opts.set_credentials(user.clone(), settings.password.clone().unwrap_or_default());
        }
        let qos = if settings.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let stop = Arc::new(AtomicBool::new(false));
        let broker = format!("{host}:{port}");
        let run = Run {
            prefix,
            qos,
            online,
            outbox: outbox.clone(),
            stop: stop.clone(),
            broker: broker.clone(),
            flush: Duration::from_millis(settings.flush_ms),
        };
        let thread = std::thread::Builder::new().name("mqtt".into()).spawn(move || run.run(opts))?;
        Ok(Self { stop, thread: Some(thread), outbox, broker })
    }

    /// Stops: sends what is waiting (for up to the settings' `flush_ms`), says `offline`, and
    /// reports the totals (what could not be sent is in `waiting` and logged).
    pub fn finish(mut self) -> OutboxTotals {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let t = self.outbox.totals();
        log::info!(
            "mqtt {}: {} message(s) queued, {} delivered, {} dropped (outbox full), {} unsent at exit; thumbnails {} sent, {} skipped",
            self.broker,
            t.queued,
            t.delivered,
            t.dropped,
            t.waiting,
            t.thumbnails_sent,
            t.thumbnails_skipped
        );
        t
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Run {
    prefix: String,
    qos: QoS,
    online: String,
    outbox: Arc<Outbox>,
    stop: Arc<AtomicBool>,
    broker: String,
    flush: Duration,
}

impl Run {
    fn topic(&self, kind: Kind) -> String {
        let leaf = match kind {
            Kind::Part => "part",
            Kind::Fault => "fault",
            Kind::Counters => "counters",
            Kind::Alarm => "alarm",
        };
        format!("{}/{leaf}", self.prefix)
    }

    fn run(self, opts: MqttOptions) {
        let (client, mut conn) = Client::new(opts, 2 * WINDOW);
        let mut window: VecDeque<Sent> = VecDeque::with_capacity(WINDOW + 2);
        let mut connected = false;
        let mut failures = 0u32;
        let mut stopping_since: Option<Instant> = None;
        let mut said_offline = false;
        let status = format!("{}/status", self.prefix);
        // The first thing sent on every connection: we are here.
        let mut pending_online = true;
        loop {
            if self.stop.load(Ordering::Relaxed) && stopping_since.is_none() {
                stopping_since = Some(Instant::now());
            }
            if let Some(t) = stopping_since {
                let drained = self.outbox.is_empty() && window.is_empty();
                if drained && !said_offline && connected {
                    // A clean goodbye replaces the retained `online` (the will is for crashes).
                    send_status(&client, &mut window, &status, br#"{"state":"offline"}"#.to_vec());
                    said_offline = true;
                    continue;
                }
                if (drained && said_offline) || t.elapsed() >= self.flush {
                    let _ = client.disconnect();
                    // Let the library write the disconnect.
                    let _ = conn.recv_timeout(Duration::from_millis(100));
                    if !window.is_empty() {
                        log::warn!(
                            "mqtt {}: {} message(s) sent but not acknowledged at exit",
                            self.broker,
                            window.len()
                        );
                    }
                    return;
                }
            }
            if connected {
                if pending_online {
                    send_status(&client, &mut window, &status, self.online.clone().into_bytes());
                    pending_online = false;
                }
                self.feed(&client, &mut window);
            }
            match conn.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    connected = true;
                    if failures > 0 {
                        log::info!(
                            "mqtt {}: connected again; sending {} unacknowledged and {} waiting message(s)",
                            self.broker,
                            window.len(),
                            self.outbox.len()
                        );
                    } else {
                        log::info!("mqtt {}: connected", self.broker);
                    }
                    failures = 0;
                    // A clean session: the library dropped what it had in flight; send our
                    // copies again, in order.
                    for s in window.iter_mut() {
                        s.pkid = None;
                    }
                    for s in window.iter() {
                        hand_over(&client, s);
                    }
                    pending_online = true;
                }
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if pkid == 0 {
                        // QoS 0: written is all there is.
                        if let Some(s) = window.pop_front() {
                            self.delivered(&s);
                        }
                    } else if let Some(s) = window.iter_mut().find(|s| s.pkid.is_none()) {
                        s.pkid = Some(pkid);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                    if let Some(i) = window.iter().position(|s| s.pkid == Some(ack.pkid)) {
                        let s = window.remove(i).expect("index from position");
                        self.delivered(&s);
                    }
                }
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
                Ok(Err(e)) => {
                    if connected || failures == 0 {
                        log::warn!(
                            "mqtt {}: {}; keeping up to {} message(s) until it is back",
                            self.broker,
                            describe(&e),
                            self.outbox.capacity()
                        );
                    }
                    connected = false;
                    failures += 1;
                    if stopping_since.is_some_and(|t| t.elapsed() >= self.flush) {
                        return;
                    }
                    // Retry soon (events should flow as soon as the broker is back), but do
                    // not spin on a refused connection.
                    std::thread::sleep(Duration::from_millis((125u64 << failures.min(4)).min(2000)));
                }
            }
        }
    }

    /// Hands messages from the outbox to the library while the window has room.
    fn feed(&self, client: &Client, window: &mut VecDeque<Sent>) {
        if let Some((part, jpeg)) = (window.len() < WINDOW).then(|| self.outbox.take_thumbnail_jpeg()).flatten() {
            let sent = Sent {
                topic: format!("{}/thumbnail/{part}", self.prefix),
                payload: jpeg,
                retain: false,
                qos: self.qos,
                pkid: None,
                thumbnail: true,
            };
            if hand_over(client, &sent) {
                window.push_back(sent);
            }
        }
        let mut handed = false;
        while window.len() < WINDOW {
            let Some(m) = self.outbox.pop() else { break };
            let sent = Sent {
                topic: self.topic(m.kind),
                payload: m.payload,
                retain: false,
                qos: self.qos,
                pkid: None,
                thumbnail: false,
            };
            if hand_over(client, &sent) {
                window.push_back(sent);
                handed = true;
            } else {
                // The library's queue holds at most the window, so this should not happen;
                // if it does, the message is counted lost, as when the outbox overflows.
                self.outbox.stats.dropped.fetch_add(1, Ordering::Relaxed);
                log::error!("mqtt {}: the client's queue is full: a message was dropped", self.broker);
                break;
            }
        }
        if handed {
            self.outbox.restock();
        }
    }

    fn delivered(&self, s: &Sent) {
        let stats = &self.outbox.stats;
        if s.thumbnail {
            stats.thumbnails_sent.fetch_add(1, Ordering::Relaxed);
        } else if !s.retain {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends the retained status (QoS 1), kept in the window until acknowledged like the rest.
fn send_status(client: &Client, window: &mut VecDeque<Sent>, topic: &str, payload: Vec<u8>) {
    let sent =
        Sent { topic: topic.to_string(), payload, retain: true, qos: QoS::AtLeastOnce, pkid: None, thumbnail: false };
    if hand_over(client, &sent) {
        window.push_back(sent);
    }
}

/// Gives a copy of `s` to the library; false when its queue is full.
fn hand_over(client: &Client, s: &Sent) -> bool {
    client.try_publish(s.topic.clone(), s.qos, s.retain, s.payload.clone()).is_ok()
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "broker refused the connection (not running?)".into()
        }
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?} (check username and password)")
        }
        other => format!("connection lost: {other}"),
    }
}
