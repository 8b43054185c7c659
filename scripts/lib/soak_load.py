#!/usr/bin/env python3
"""Paced load generators of scripts/soak (each runs as its own process, so that the GIL of one
does not slow the other or the sampler).

  soak_load.py http URL RATE OUT_PREFIX   POST /ingest NDJSON batches of numbered records
  soak_load.py mqtt HOST PORT ROOT RATE OUT_PREFIX   QoS 1 publishes of numbered records

Both run until SIGTERM/SIGINT, then finish what is in flight and write
  OUT_PREFIX.json   {"sent": N, "accepted": N, "statuses": {...}}
  OUT_PREFIX.bits   one byte per seq (index seq-1): 1 = accepted (HTTP record answered "ok",
                    MQTT publish PUBACKed by the broker)
and, every second, OUT_PREFIX.progress (one JSON line: sent, accepted) for the progress lines.
Pacing: the schedule advances at RATE records per second; a generator that fell behind (kgate
answering slowly during a broker restart) does not burst to catch up by more than 1 s of
records: the skipped slots are simply never sent (the load stays "fixed", not a backlog).
"""

import http.client
import json
import os
import signal
import sys
import threading
import time

STOP = threading.Event()


def on_signal(_sig, _frame):
    STOP.set()


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


class Pacer:
    """Hands out numbered slots at `rate` per second, never more than 1 s behind."""

    def __init__(self, rate, batch):
        self.rate = float(rate)
        self.batch = batch
        self.lock = threading.Lock()
        self.next_seq = 1
        self.t0 = time.monotonic()
        self.credit_seq = 0.0  # slots granted so far (float)
        self.skipped = 0

    def take(self):
        """(first seq, count) of the next batch, waiting for its time; None once stopped."""
        while not STOP.is_set():
            with self.lock:
                now = time.monotonic()
                due = (now - self.t0) * self.rate
                if due - self.credit_seq > self.rate:  # more than 1 s behind: forget the rest
                    skip = int(due - self.credit_seq - self.rate)
                    self.credit_seq += skip
                    self.skipped += skip
                if due - self.credit_seq >= self.batch:
                    self.credit_seq += self.batch
                    first = self.next_seq
                    self.next_seq += self.batch
                    return first, self.batch
                wait = (self.credit_seq + self.batch - due) / self.rate
            time.sleep(min(max(wait, 0.0005), 0.05))
        return None


def write_out(prefix, sent, bits, statuses, extra=None):
    accepted = bits.count(1)
    with open(prefix + ".bits", "wb") as f:
        f.write(bits)
    doc = {"sent": sent, "accepted": accepted, "statuses": statuses}
    doc.update(extra or {})
    with open(prefix + ".json", "w") as f:
        json.dump(doc, f)


def progress_loop(prefix, get):
    while not STOP.wait(1.0):
        tmp = prefix + ".progress.tmp"
        with open(tmp, "w") as f:
            json.dump(get(), f)
        os.replace(tmp, prefix + ".progress")


# ----------------------------------------------------------------------------------- HTTP


def http_main(url, rate, prefix):
    rate = int(rate)
    assert url.startswith("http://")
    hostport, path = url[len("http://"):].split("/", 1)
    host, port = hostport.rsplit(":", 1)
    path = "/" + path
    batch = max(1, min(100, rate // 100))  # ~100 requests/s
    workers = 8  # concurrent connections: one slow answer does not stop the load
    pacer = Pacer(rate, batch)
    bits = bytearray()
    bits_lock = threading.Lock()
    statuses = {}
    sent = [0]

    def mark(first, results):
        with bits_lock:
            end = first - 1 + len(results)
            if len(bits) < end:
                bits.extend(b"\0" * (end - len(bits) + 1_000_000))
            for i, r in enumerate(results):
                if r.get("status") == "ok":
                    bits[first - 1 + i] = 1

    def worker():
        conn = None
        while True:
            slot = pacer.take()
            if slot is None:
                break
            first, n = slot
            body = "".join(
                '{"seq":%d,"device":"h%d","v":%d}\n' % (s, s % 16, s * 7 % 1000)
                for s in range(first, first + n)
            ).encode()
            status = 0
            results = []
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                conn.request("POST", path, body, {"Content-Type": "application/x-ndjson"})
                resp = conn.getresponse()
                status = resp.status
                text = resp.read()
                try:
                    results = json.loads(text).get("results", []) or []
                except ValueError:
                    results = []
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
            with bits_lock:
                sent[0] += n
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            mark(first, results)
            if status == 429:
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    threading.Thread(
        target=progress_loop,
        args=(prefix, lambda: {"sent": sent[0], "accepted": bits.count(1), "skipped": pacer.skipped}),
        daemon=True,
    ).start()
    for t in threads:
        t.join()
    write_out(prefix, sent[0], bits, statuses, {"skipped": pacer.skipped})


# ----------------------------------------------------------------------------------- MQTT


def mqtt_main(host, port, root, rate, prefix):
    import paho.mqtt.client as mqtt

    rate = int(rate)
    batch = max(1, rate // 200)  # 200 wake-ups a second
    pacer = Pacer(rate, batch)
    lock = threading.Lock()
    mid_seq = {}  # mid -> seq, until its PUBACK
    bits = bytearray()
    sent = [0]
    errors = {}

    early = set()  # mids PUBACKed before publish() returned them to us

    def mark(seq):
        if len(bits) < seq:
            bits.extend(b"\0" * (seq - len(bits) + 1_000_000))
        bits[seq - 1] = 1

    # paho calls this holding its own message lock: never call paho while holding `lock`.
    def on_publish(_client, _userdata, mid, _rc=None, _props=None):
        with lock:
            seq = mid_seq.pop(mid, None)
            if seq is None:
                early.add(mid)
            else:
                mark(seq)

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="soak-pub-%d" % os.getpid(), clean_session=True
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, int(port), keepalive=30)
    client.loop_start()
    threading.Thread(
        target=progress_loop,
        args=(prefix, lambda: {"sent": sent[0], "accepted": bits.count(1), "skipped": pacer.skipped}),
        daemon=True,
    ).start()
    while True:
        slot = pacer.take()
        if slot is None:
            break
        first, n = slot
        for seq in range(first, first + n):
            d = seq % 16
            payload = '{"seq":%d,"device":"d%d","temp":%.1f}' % (seq, d, 20 + (seq % 50) / 10)
            info = client.publish("%s/devices/d%d/telemetry" % (root, d), payload, qos=1)
            with lock:
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    errors[str(info.rc)] = errors.get(str(info.rc), 0) + 1
                elif info.mid in early:
                    early.discard(info.mid)
                    mark(seq)
                else:
                    mid_seq[info.mid] = seq
            sent[0] += 1
    # Wait for the PUBACKs of what is in flight (the broker is local and never restarted).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if not mid_seq:
                break
        time.sleep(0.1)
    client.disconnect()
    client.loop_stop()
    write_out(prefix, sent[0], bits, {"publish_errors": errors, "unacked": len(mid_seq)},
              {"skipped": pacer.skipped})


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "http":
        http_main(*sys.argv[2:5])
    elif kind == "mqtt":
        mqtt_main(*sys.argv[2:7])
    else:
        sys.exit("usage: soak_load.py http URL RATE OUT | mqtt HOST PORT ROOT RATE OUT")
