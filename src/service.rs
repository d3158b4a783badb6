//! systemd service notifications (`sd_notify`): READY once inspecting, WATCHDOG pings from the
//! loop, STOPPING at the end. A hung loop stops pinging, so systemd (`WatchdogSec=`) kills and
//! restarts it; its GPIO lines are released and fall to the safe state.
//!
//! The protocol is one datagram per message to the socket in `$NOTIFY_SOCKET`; no crate needed.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The notification socket, when running under systemd with `Type=notify`.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half the watchdog period (`$WATCHDOG_USEC`): how often to ping.
    ping_every: Option<Duration>,
    last_ping: Option<Duration>,
    /// Whether a failed send was logged (once: the loop must not fill the log).
    warned: std::cell::Cell<bool>,
}

impl Notifier {
    /// From the environment systemd sets; `None` when not run as a notify service.
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok());
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        match Self::new(path.to_str()?, watchdog.filter(|_| pid_ok).map(Duration::from_micros)) {
            Ok(n) => Some(n),
            Err(e) => {
                log::error!("cannot use the systemd notification socket {path:?}: {e}");
                None
            }
        }
    }

    /// Notifications to `path` (a leading `@` names an abstract socket); pings every half of
    /// `watchdog`.
    pub fn new(path: &str, watchdog: Option<Duration>) -> std::io::Result<Self> {
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        // Never block the frame loop on a notification: a full socket queue drops the message.
        socket.set_nonblocking(true)?;
        Ok(Self { socket, addr, ping_every: watchdog.map(|w| w / 2), last_ping: None, warned: Default::default() })
    }

    fn send(&self, msg: &str) {
        if let Err(e) = self.socket.send_to_addr(msg.as_bytes(), &self.addr) {
            if !self.warned.replace(true) {
                log::warn!("systemd notification {msg:?} failed: {e} (further failures are not logged)");
            }
        }
    }

    /// The service is up (model loaded, outputs safe, camera open).
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=inspecting");
    }

    /// Pings the watchdog if half its period has passed since the last ping (`now` on the loop's
    /// clock). Call once per part.
    pub fn tick(&mut self, now: Duration) {
        let Some(every) = self.ping_every else { return };
        if self.last_ping.is_none_or(|t| now.saturating_sub(t) >= every) {
            self.send("WATCHDOG=1");
            self.last_ping = Some(now);
        }
    }

    /// A one-line status shown by `systemctl status`.
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={text}"));
    }

    /// The service is shutting down.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_watchdog_and_stopping_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut n = Notifier::new(path.to_str().unwrap(), Some(Duration::from_secs(10))).unwrap();
        n.ready();
        for ms in [0, 1000, 4999, 5000, 6000, 10_000] {
            n.tick(Duration::from_millis(ms));
        }
        n.stopping();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(len) = server.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        // Pings at 0, 5000 and 10000 ms: every half period, not on every part.
        assert_eq!(got, ["READY=1\nSTATUS=inspecting", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]);
    }
}
