"""The broker-outage figures of docs/FLEET.md: `anovit run` publishes to a real Mosquitto on
loopback; the broker is stopped for OUTAGE seconds and started again. Prints, for the parts
before, during and after the outage, their number, rate and loop latency (exposure to verdict,
p50 / p99, from the event log), and whether every part event reached an independent subscriber.

    python3 scripts/mqtt_outage.py [--up 20] [--outage 30] [--doc]

Needs mosquitto and mosquitto-clients (Debian) and a release build (`cargo build --release`).
`--doc` writes the result between the `outage` markers of docs/FLEET.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docsection import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def complete_events(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--up", type=float, default=20, help="seconds with the broker up, before and after")
    ap.add_argument("--outage", type=float, default=30, help="seconds with the broker stopped")
    ap.add_argument("--doc", action="store_true", help="write the section of docs/FLEET.md")
    a = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    binary = ROOT / "target/release/anovit"
    for need in (mosquitto, shutil.which("mosquitto_sub"), binary):
        if not need or not Path(need).exists():
            sys.exit(f"missing {need}: apt install mosquitto mosquitto-clients; cargo build --release")

    tmp = Path(tempfile.mkdtemp(prefix="anovit-outage-"))
    port = free_port()
    user = "user root\n" if os.geteuid() == 0 else ""
    (tmp / "m.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp}/\nmax_queued_messages 0\n{user}"
    )
    blog = open(tmp / "broker.log", "a")

    def broker() -> subprocess.Popen:
        p = subprocess.Popen([mosquitto, "-c", str(tmp / "m.conf")], stdout=blog, stderr=blog)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                return p
            except OSError:
                time.sleep(0.05)
        sys.exit("mosquitto did not start")

    b = broker()
    sub_out = tmp / "sub.txt"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c", "-i", "outage-sub",
         "-t", "anovit/#", "-F", "%t %x"],
        stdout=open(sub_out, "w"), stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    board = tmp / "board.toml"
    board.write_text((ROOT / "board/host-demo.toml").read_text().replace("parts = 200 ", "parts = 0 "))
    events = tmp / "events.jsonl"
    run = subprocess.Popen([str(binary), "run", "-q", "--board", str(board), "--mqtt", f"127.0.0.1:{port}",
                            "--events", str(events)], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=open(tmp / "run.err", "w"))
    time.sleep(a.up)
    marks = [len(complete_events(events))]
    b.send_signal(signal.SIGTERM)
    b.wait()
    time.sleep(a.outage)
    marks.append(len(complete_events(events)))
    b = broker()
    time.sleep(a.up)
    run.send_signal(signal.SIGTERM)
    rc = run.wait()
    log = complete_events(events)
    seqs = {e["seq"] for e in log}
    got: set[int] = set()
    for _ in range(600):
        got = set()
        for line in sub_out.read_text().splitlines():
            topic, _, hexp = line.partition(" ")
            if topic.endswith("/part"):
                got.add(json.loads(bytes.fromhex(hexp))["seq"])
        if seqs <= got:
            break
        time.sleep(0.1)
    sub.terminate()
    b.terminate()
    b.wait()
    err = (tmp / "run.err").read_text()
    totals = next((line for line in err.splitlines() if "message(s) queued" in line), "(no mqtt totals)")

    phases = [("broker up", 0, marks[0]), (f"broker stopped ({a.outage:.0f} s)", marks[0], marks[1]),
              ("broker back", marks[1], len(log))]
    rows = ["| phase | parts | latency p50 (ms) | latency p99 (ms) |", "|---|---:|---:|---:|"]
    for name, lo, hi in phases:
        # The first parts of a run include the model's first, slower calls.
        part = [e["latency_us"]["total"] / 1e3 for e in log[max(lo, 5):hi]]
        rows.append(f"| {name} | {hi - lo} | {pct(part, 50):.1f} | {pct(part, 99):.1f} |")
    missing = sorted(seqs - got)
    delivered = f"{len(seqs & got)} of {len(seqs)} part events reached the subscriber" + (
        f"; missing: {missing[:10]}" if missing else ", none missing")
    text = "\n".join([
        f"Command: `python3 scripts/mqtt_outage.py --up {a.up:.0f} --outage {a.outage:.0f}` "
        f"({datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} cores, {platform.machine()}; "
        "host demo: synthetic parts as fast as the model goes, Mosquitto on loopback).",
        "",
        *rows,
        "",
        f"- {delivered}; exit code {rc}.",
        f"- publisher: `{totals.split('] ', 1)[-1]}`",
    ])
    print(text)
    if a.doc:
        write_section(ROOT / "docs/FLEET.md", "outage", text)
        print("== wrote the outage section of docs/FLEET.md")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if rc == 0 and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
