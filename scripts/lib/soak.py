#!/usr/bin/env python3
"""The soak of scripts/soak (run it through scripts/soak, which builds kgate and the venv).

  soak.py run  --kgate BIN --repo DIR --work DIR --minutes M --rate R --restart-every S ...
  soak.py plot CSV PNG [SUMMARY.json]   (re-draws a plot from a soak CSV)

See `scripts/soak --help` for what a run does.
"""

import argparse
import csv
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
LOAD = os.path.join(HERE, "soak_load.py")


def log(msg):
    print("soak %s %s" % (datetime.now(timezone.utc).strftime("%H:%M:%S"), msg), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("%s did not listen on 127.0.0.1:%d within %ds" % (what, port, timeout))


# ----------------------------------------------------------------------------- /metrics

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port):
    """{(name, frozenset(labels)): value} of kgate's /metrics, or None when it did not answer."""
    import http.client

    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except (OSError, http.client.HTTPException):
        return None
    out = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = LINE.match(line)
        if not m:
            continue
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            pass
    return out


def total(series, name, **want):
    """Sum of `name` over the series whose labels include `want`."""
    s = 0.0
    for (n, labels), v in series.items():
        if n == name and all((k, v2) in labels for k, v2 in want.items()):
            s += v
    return s


def buckets(series, topic=None):
    """{le: cumulative count} of the accept→ack histogram (all topics, or one)."""
    out = {}
    for (n, labels), v in series.items():
        if n != "kafka_producer_request_duration_seconds_bucket":
            continue
        d = dict(labels)
        if topic is not None and d.get("topic") != topic:
            continue
        le = float("inf") if d["le"] == "+Inf" else float(d["le"])
        out[le] = out.get(le, 0.0) + v
    return out


def quantile(q, now, before):
    """q-quantile (seconds) of the observations between two histogram scrapes (bucket deltas,
    interpolated inside the bucket like Prometheus' histogram_quantile); None without any."""
    les = sorted(now)
    delta = [(le, now[le] - before.get(le, 0.0)) for le in les]
    count = delta[-1][1] if delta else 0
    if count <= 0:
        return None
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le, c in delta:
        if c >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bucket: its bound
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


# ----------------------------------------------------------------------------- /proc


def proc_sample(pid):
    rss_kb = threads = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir("/proc/%d/fd" % pid))
    return rss_kb / 1024.0, fds, threads


# ----------------------------------------------------------------------------- counting


SEQ = re.compile(rb'"seq":\s*(\d+)')


def count_topic(brokers, topic):
    """(distinct seqs as a bytearray indexed seq-1, duplicates, records, records without seq)."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "soak-count-%d" % os.getpid(),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "max.partition.fetch.bytes": 8 << 20,
        "fetch.max.bytes": 64 << 20,
        "queued.max.messages.kbytes": 256 << 10,
    })
    md = c.list_topics(topic, timeout=30)
    parts = sorted(md.topics[topic].partitions)
    high = {}
    for p in parts:
        _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        high[p] = hi
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    pending = {p for p in parts if high[p] > 0}
    seen = bytearray()
    dups = records = noseq = 0
    idle_since = time.monotonic()
    while pending:
        msgs = c.consume(10000, timeout=1.0)
        if not msgs:
            if time.monotonic() - idle_since > 60:
                raise RuntimeError("reading %s back stalled (partitions left: %s)" % (topic, sorted(pending)))
            continue
        idle_since = time.monotonic()
        for m in msgs:
            if m.error():
                continue
            records += 1
            mo = SEQ.search(m.value() or b"")
            if mo is None:
                noseq += 1
            else:
                i = int(mo.group(1)) - 1
                if i >= len(seen):
                    seen.extend(b"\0" * (i - len(seen) + 1_000_000))
                if seen[i]:
                    dups += 1
                else:
                    seen[i] = 1
            if m.offset() >= high[m.partition()] - 1:
                pending.discard(m.partition())
    c.close()
    return seen, dups, records, noseq


def lost_of(accepted_bits, seen):
    """Accepted seqs (bits[i] == 1 → seq i+1) that are not in Kafka."""
    lost = 0
    n = len(accepted_bits)
    seen = seen + b"\0" * max(0, n - len(seen))
    # Fast path: byte strings compare in C; walk only where they differ.
    step = 1 << 20
    for off in range(0, n, step):
        a = accepted_bits[off:off + step]
        s = seen[off:off + step]
        if a == s:
            continue
        for x, y in zip(a, s):
            if x and not y:
                lost += 1
    return lost


# ----------------------------------------------------------------------------- the run


class Soak:
    def __init__(self, a):
        self.a = a
        self.work = os.path.abspath(a.work)
        os.makedirs(self.work, exist_ok=True)
        self.procs = {}  # name -> Popen
        self.broker_env = None
        self.events = []  # (t, what)
        self.broker_down = False
        self.down_since = None
        self.down_total = 0.0
        self.restarts = []  # (t_down, t_up)
        self.stop = threading.Event()
        self.t0 = None
        self.lock = threading.Lock()

    # ---- helpers

    def t(self):
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def services(self, *args):
        env = dict(os.environ)
        env.update(self.broker_env)
        r = subprocess.run(
            [os.path.join(self.a.repo, "scripts", "services")] + list(args),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        with open(os.path.join(self.work, "services.log"), "a") as f:
            f.write(r.stdout)
        if r.returncode != 0:
            raise RuntimeError("scripts/services %s failed:\n%s" % (" ".join(args), r.stdout[-3000:]))

    def spawn(self, name, argv, **kw):
        out = open(os.path.join(self.work, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        self.procs[name] = p
        return p

    def kgate(self, *args, check=True):
        r = subprocess.run([self.a.kgate] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if check and r.returncode != 0:
            raise RuntimeError("kgate %s: %s" % (" ".join(args), r.stdout[-2000:]))
        return r.stdout

    def terminate(self, name, timeout=30):
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            log("%s did not stop within %ds: SIGKILL" % (name, timeout))
            p.kill()
            return p.wait()

    def cleanup(self):
        """Stops everything this run started (safe to call twice)."""
        self.stop.set()
        for name in ["synth", "load-http", "load-mqtt", "kgate", "mosquitto"]:
            try:
                self.terminate(name, 60 if name == "kgate" else 15)
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                log("stopping %s: %s" % (name, e))
        if self.broker_env is not None:
            try:
                self.services("down", "kafka")
                # The broker's data (a GB after 30 min at 20k/s): its logs stay.
                import shutil

                shutil.rmtree(os.path.join(self.broker_env["KGATE_STATE_DIR"], "kafka-%d" % self.kport, "data"),
                              ignore_errors=True)
            except Exception as e:  # noqa: BLE001
                log("stopping the private broker: %s" % e)
            self.broker_env = None

    # ---- set-up

    def start(self):
        a = self.a
        self.kport, self.cport, self.qport = free_port(), free_port(), free_port()
        self.sport, self.hport, self.mport = free_port(), free_port(), free_port()
        while len({self.kport, self.cport, self.qport, self.sport, self.hport, self.mport}) < 6:
            self.cport, self.qport, self.sport, self.hport, self.mport = (
                free_port(), free_port(), free_port(), free_port(), free_port())
        self.brokers = "127.0.0.1:%d" % self.kport
        self.broker_env = {
            "KAFKA_PORT": str(self.kport),
            "KAFKA_CONTROLLER_PORT": str(self.cport),
            "KGATE_STATE_DIR": os.path.join(self.work, "state"),
            # A loaded machine can take more than scripts/services' 90 s to load the partitions
            # back (it stops a broker that is not ready by then: the soak's 3rd restart, once).
            "KAFKA_READY_TIMEOUT": os.environ.get("KAFKA_READY_TIMEOUT", "300"),
        }
        log("private Kafka on %s (state %s) ..." % (self.brokers, self.broker_env["KGATE_STATE_DIR"]))
        self.services("up", "kafka")

        # A private Mosquitto: a queue without a cap for kgate's session, so that what the
        # broker PUBACKed to the publisher during a Kafka restart is never dropped by Mosquitto
        # (scripts/services' Mosquitto caps it at 100,000 messages).
        mq = os.path.join(self.work, "mosquitto")
        os.makedirs(os.path.join(mq, "data"), exist_ok=True)
        conf = os.path.join(mq, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 1000\nmax_queued_messages 0\nmax_queued_bytes 0\n"
                    "log_dest file %s/mosquitto.log\nlog_type error\nlog_type warning\n"
                    "log_type notice\nconnection_messages true\n" % (self.qport, mq))
            if os.getuid() == 0:
                f.write("user root\n")
        mosq = next((p for p in ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"] if os.path.exists(p)), "mosquitto")
        self.spawn("mosquitto", [mosq, "-c", conf])
        wait_port(self.qport, 20, "mosquitto")

        self.topics = {s: "soak.%s" % s for s in ("ws", "http", "mqtt")}
        for t in self.topics.values():
            self.kgate("topics", "create", "--brokers", self.brokers, "-p", str(a.partitions), t)
        self.kgate("topics", "create", "--brokers", self.brokers, "-p", "1", "soak.dlq")

        self.rates = {
            "ws": int(round(a.rate * a.split[0])),
            "http": int(round(a.rate * a.split[1])),
            "mqtt": a.rate - int(round(a.rate * a.split[0])) - int(round(a.rate * a.split[1])),
        }
        log("load: %d events/s = WS %d + HTTP %d + MQTT %d" % (a.rate, self.rates["ws"], self.rates["http"], self.rates["mqtt"]))
        self.spawn("synth", [a.kgate, "synth", "--listen", "127.0.0.1:%d" % self.sport, "--feed", "ticker",
                             "--rate", str(self.rates["ws"]), "--id", "soak"])
        wait_port(self.sport, 20, "kgate synth")

        cfg = os.path.join(self.work, "kgate.yaml")
        with open(cfg, "w") as f:
            f.write(f"""# Written by scripts/soak.
kafka:
  brokers: ['{self.brokers}']
metrics: {{listen: '127.0.0.1:{self.mport}'}}
dlq: {{topic: soak.dlq}}
shutdown_timeout: 60s
http:
  listen: '127.0.0.1:{self.hport}'
  ack_timeout: 30s
pipelines:
  - name: ticks
    source: {{websocket: {{urls: ['ws://127.0.0.1:{self.sport}/ws']}}}}
    topic: {self.topics['ws']}
    key: '${{symbol}}'
  - name: web
    source: {{http: {{}}}}
    topic: {self.topics['http']}
    key: '${{device}}'
  - name: telemetry
    source:
      mqtt:
        url: 'mqtt://127.0.0.1:{self.qport}'
        client_id: kgate-soak
        subscriptions: [{{topic: 'soak/devices/+/telemetry', qos: 1}}]
        backoff_initial: 100ms
        backoff_max: 1s
    topic: {self.topics['mqtt']}
    key: '${{@topic.2}}'
""")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.gw = self.spawn("kgate", [a.kgate, "run", "--config", cfg], env=env)
        wait_port(self.mport, 60, "kgate's metrics")
        wait_port(self.hport, 60, "kgate's HTTP source")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = scrape(self.mport) or {}
            if total(s, "kgate_mqtt_connections_total") >= 1:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("kgate did not connect to Mosquitto within 60 s (see %s/kgate.log)" % self.work)
        time.sleep(1)  # the SUBSCRIBE's answer

        py = sys.executable
        self.spawn("load-http", [py, "-B", LOAD, "http", "http://127.0.0.1:%d/ingest/web" % self.hport,
                                 str(self.rates["http"]), os.path.join(self.work, "http")])
        self.spawn("load-mqtt", [py, "-B", LOAD, "mqtt", "127.0.0.1", str(self.qport), "soak",
                                 str(self.rates["mqtt"]), os.path.join(self.work, "mqtt")])

    # ---- broker restarts

    def restarter(self):
        every = self.a.restart_every
        n = 1
        while not self.stop.wait(max(0.0, n * every - self.t())):
            if n * every >= self.a.minutes * 60:
                return
            t_down = self.t()
            log("broker restart %d: down" % n)
            with self.lock:
                self.broker_down = True
                self.down_since = t_down
                self.restart_marks.append(t_down)
            try:
                self.services("down", "kafka")
                t_stopped = self.t()
                try:
                    self.services("up", "kafka")
                except RuntimeError as e:
                    # Once more: the end of the run needs the broker (to drain and count).
                    log("broker restart %d: start failed, trying again: %s" % (n, str(e)[-300:]))
                    self.failures.append("broker restart %d: the first start failed" % n)
                    self.services("up", "kafka")
            except Exception as e:  # noqa: BLE001
                log("broker restart %d failed: %s" % (n, e))
                self.failures.append("broker restart %d: %s" % (n, e))
                return
            t_up = self.t()
            with self.lock:
                self.broker_down = False
                self.up_marks.append(t_up)
                self.down_total += t_up - t_down
            self.restarts.append({"n": n, "down_at_s": round(t_down, 1), "stopped_s": round(t_stopped - t_down, 1),
                                  "up_after_s": round(t_up - t_down, 1)})
            log("broker restart %d: up again after %.1fs (stop took %.1fs)" % (n, t_up - t_down, t_stopped - t_down))
            n += 1

    # ---- sampling

    def progress(self, name):
        try:
            with open(os.path.join(self.work, name + ".progress")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def sample_loop(self):
        a = self.a
        end = a.minutes * 60
        prev = scrape(self.mport)
        prev_t = self.t()
        k = 1
        reported = reported_up = 0  # restart marks already in the CSV
        last_progress = 0.0
        with open(self.csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.COLUMNS)
            while not self.stop.wait(max(0.0, k * a.sample - self.t())):
                t = self.t()
                if self.gw.poll() is not None:
                    self.failures.append("kgate exited (%s) at t=%.0fs" % (self.gw.returncode, t))
                    log(self.failures[-1])
                    return
                rss, fds, threads = proc_sample(self.gw.pid)
                cur = scrape(self.mport)
                with self.lock:
                    marks = self.restart_marks[reported:]
                    reported = len(self.restart_marks)
                    ups = self.up_marks[reported_up:]
                    reported_up = len(self.up_marks)
                    down = 1 if self.broker_down else 0
                row = {"t_s": round(t, 1), "utc": datetime.now(timezone.utc).strftime("%H:%M:%S"),
                       "rss_mb": round(rss, 1), "fds": fds, "threads": threads, "broker_down": down,
                       "restart_at_s": ";".join("%.1f" % m for m in marks),
                       "broker_up_at_s": ";".join("%.1f" % m for m in ups)}
                if cur is not None and prev is not None:
                    dt = t - prev_t
                    row["scraped"] = 1
                    if any(n == "kgate_runtime_tasks" for n, _ in cur):  # absent in older binaries
                        row["tasks"] = int(total(cur, "kgate_runtime_tasks"))
                    row["inflight"] = int(total(cur, "kgate_producer_inflight_records"))
                    q = quantile(0.99, buckets(cur), buckets(prev))
                    row["p99_ms"] = "" if q is None else round(q * 1000, 2)
                    for s, topic in self.topics.items():
                        q = quantile(0.99, buckets(cur, topic), buckets(prev, topic))
                        row["p99_%s_ms" % s] = "" if q is None else round(q * 1000, 2)
                    row["in_per_s"] = round((total(cur, "kafka_producer_requests_total") - total(prev, "kafka_producer_requests_total")) / dt)
                    row["out_per_s"] = round((total(cur, "kafka_messages_published_total") - total(prev, "kafka_messages_published_total")) / dt)
                    for s, topic in self.topics.items():
                        row["out_%s_per_s" % s] = round((total(cur, "kafka_messages_published_total", topic=topic) - total(prev, "kafka_messages_published_total", topic=topic)) / dt)
                    row["ws_read"] = int(total(cur, "kafka_producer_websocket_messages_received_total"))
                row["http_accepted"] = self.progress("http").get("accepted", "")
                row["mqtt_accepted"] = self.progress("mqtt").get("accepted", "")
                w.writerow([row.get(c, "") for c in self.COLUMNS])
                f.flush()
                self.rows.append(row)
                if cur is not None:
                    prev, prev_t = cur, t
                if t - last_progress >= 59 or t >= end - 0.5:
                    last_progress = t
                    log("t=%3dm%02ds rss %.1f MB, fds %d, tasks %s, threads %d, p99 %s ms, in %s/s, out %s/s, "
                        "ws read %s, http ok %s, mqtt acked %s, restarts %d%s" % (
                            t // 60, t % 60, rss, fds, row.get("tasks", "?"), threads, row.get("p99_ms", "?"),
                            row.get("in_per_s", "?"), row.get("out_per_s", "?"), row.get("ws_read", "?"),
                            row["http_accepted"], row["mqtt_accepted"], len(self.restarts), " (broker down)" if down else ""))
                if t >= end - 0.5:
                    return
                k += 1

    COLUMNS = ["t_s", "utc", "rss_mb", "fds", "tasks", "threads", "p99_ms", "p99_ws_ms", "p99_http_ms", "p99_mqtt_ms",
               "in_per_s", "out_per_s", "out_ws_per_s", "out_http_per_s", "out_mqtt_per_s", "inflight", "ws_read",
               "http_accepted", "mqtt_accepted", "broker_down", "restart_at_s", "broker_up_at_s"]

    # ---- the end

    def finish(self):
        """Stops the load, lets kgate write what it took, stops kgate; the accepted counts."""
        log("stopping the load generators ...")
        self.terminate("synth", 15)
        self.terminate("load-http", 90)
        self.terminate("load-mqtt", 90)
        acc = {}
        for s in ("http", "mqtt"):
            with open(os.path.join(self.work, s + ".json")) as f:
                acc[s] = json.load(f)
            with open(os.path.join(self.work, s + ".bits"), "rb") as f:
                acc[s]["bits"] = bytearray(f.read())
        # kgate takes what Mosquitto still queues for it, and writes what it holds.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            s = scrape(self.mport) or {}
            acks = total(s, "kgate_mqtt_acks_total")
            if acks >= acc["mqtt"]["accepted"] and total(s, "kgate_producer_inflight_records") == 0:
                break
            time.sleep(1)
        else:
            log("kgate did not drain within 600 s (mqtt acks %d of %d): the rest is still queued in "
                "Mosquitto for kgate's session and counts as lost below" % (acks, acc["mqtt"]["accepted"]))
        s = scrape(self.mport) or {}
        ws_read = int(total(s, "kafka_producer_websocket_messages_received_total"))
        acc["ws"] = {"sent": ws_read, "accepted": ws_read, "bits": bytearray(b"\1" * ws_read)}
        log("stopping kgate (SIGTERM) ...")
        rc = self.terminate("kgate", 120)
        self.kgate_exit = rc
        log("kgate exited %s" % rc)
        return acc

    def count(self, acc):
        res = {}
        for s, topic in self.topics.items():
            t_read = time.monotonic()
            seen, dups, records, noseq = count_topic(self.brokers, topic)
            log("read %s back in %.0fs" % (topic, time.monotonic() - t_read))
            bits = acc[s]["bits"]
            lost = lost_of(bits, seen)
            distinct = seen.count(1)
            res[s] = {"sent": acc[s]["sent"], "accepted": acc[s]["accepted"], "records": records,
                      "distinct": distinct, "lost": lost, "dups": dups, "noseq": noseq,
                      "extra": distinct - (acc[s]["accepted"] - lost)}
            for k in ("statuses", "skipped"):
                if k in acc[s]:
                    res[s][k] = acc[s][k]
            log("%-4s sent %d, accepted %d, in Kafka %d records (%d distinct), lost %d, duplicates %d" % (
                s, acc[s]["sent"], acc[s]["accepted"], records, distinct, lost, dups))
        return res

    def run(self):
        a = self.a
        self.failures = []
        self.rows = []
        self.restart_marks = []
        self.up_marks = []
        os.makedirs(os.path.dirname(os.path.abspath(a.csv)), exist_ok=True)
        self.csv_path = os.path.abspath(a.csv)
        self.start()
        self.t0 = time.monotonic()
        log("running %d min at %d events/s, broker restart every %ds, a sample every %ds; CSV %s" % (
            a.minutes, a.rate, a.restart_every, a.sample, self.csv_path))
        r = threading.Thread(target=self.restarter, daemon=True)
        r.start()
        self.sample_loop()
        self.stop.set()
        r.join(timeout=240)
        acc = self.finish()
        counts = self.count(acc)
        return self.report(counts)

    def report(self, counts):
        a = self.a
        rows = [r for r in self.rows if r.get("scraped")] or self.rows
        warm = [r for r in rows if r["t_s"] >= a.warmup] or rows
        n = len(warm)
        first, last = warm[: max(1, n // 3)], warm[-max(1, n // 3):]
        p99s = [r["p99_ms"] for r in rows if r.get("p99_ms") not in ("", None)]
        # Windows far from a restart: the broker up during it and the 60 s before it.
        outages = [(x["down_at_s"], x["down_at_s"] + x["up_after_s"]) for x in self.restarts]
        if self.broker_down and self.down_since is not None:
            outages.append((self.down_since, 1e12))
        calm = [r["p99_ms"] for r in rows if r.get("p99_ms") not in ("", None)
                and not any(lo - a.sample <= r["t_s"] and r["t_s"] - 60 - a.sample <= hi for lo, hi in outages)]
        rates = [r["in_per_s"] for r in rows if r.get("in_per_s") not in ("", None)]
        up_rates = [r["in_per_s"] for r in rows if r.get("in_per_s") not in ("", None) and not r["broker_down"]]
        summ = {
            "command": a.command,
            "minutes": a.minutes, "rate": a.rate, "rates": self.rates, "restart_every_s": a.restart_every,
            "samples": len(self.rows),
            "rss_mb": {"first": rows[0]["rss_mb"], "last": rows[-1]["rss_mb"], "max": max(r["rss_mb"] for r in rows),
                       "max_first_third": max(r["rss_mb"] for r in first), "max_last_third": max(r["rss_mb"] for r in last)},
            "fds": {"min": min(r["fds"] for r in rows), "max": max(r["fds"] for r in rows),
                    "max_first_third": max(r["fds"] for r in first), "max_last_third": max(r["fds"] for r in last),
                    "first": rows[0]["fds"], "last": rows[-1]["fds"]},
            "tasks": tasks_summary(rows, first, last),
            "threads": {"min": min(r["threads"] for r in rows), "max": max(r["threads"] for r in rows)},
            "p99_ms": {"median": statistics.median(p99s) if p99s else None, "max": max(p99s) if p99s else None,
                       "calm_median": statistics.median(calm) if calm else None,
                       "calm_max": max(calm) if calm else None, "calm_windows": len(calm)},
            "in_per_s": {"mean": round(statistics.mean(rates)) if rates else None,
                         "mean_broker_up": round(statistics.mean(up_rates)) if up_rates else None,
                         "median": statistics.median(rates) if rates else None},
            "restarts": self.restarts,
            "kgate_exit": self.kgate_exit,
            "sources": counts,
        }
        problems = list(self.failures)
        for s, c in counts.items():
            if c["lost"]:
                problems.append("%s: %d accepted records not in Kafka" % (s, c["lost"]))
        if summ["rss_mb"]["max_last_third"] > summ["rss_mb"]["max_first_third"] * (1 + a.rss_growth_pct / 100.0):
            problems.append("RSS grew: max %.1f MB in the last third vs %.1f MB in the first (tolerance +%d%%)" % (
                summ["rss_mb"]["max_last_third"], summ["rss_mb"]["max_first_third"], a.rss_growth_pct))
        if summ["fds"]["max_last_third"] > summ["fds"]["max_first_third"] + a.fd_slack:
            problems.append("open fds grew: max %d in the last third vs %d in the first (tolerance +%d)" % (
                summ["fds"]["max_last_third"], summ["fds"]["max_first_third"], a.fd_slack))
        if summ["tasks"] is None:
            problems.append("tasks not sampled: this kgate has no kgate_runtime_tasks gauge")
        elif summ["tasks"]["max_last_third"] > summ["tasks"]["max_first_third"] + a.task_slack:
            problems.append("tasks grew: max %d in the last third vs %d in the first (tolerance +%d)" % (
                summ["tasks"]["max_last_third"], summ["tasks"]["max_first_third"], a.task_slack))
        if self.kgate_exit != 0:
            problems.append("kgate exited %s on SIGTERM" % self.kgate_exit)
        summ["problems"] = problems
        with open(os.path.join(self.work, "summary.json"), "w") as f:
            json.dump(summ, f, indent=1)
        if a.summary:
            with open(a.summary, "w") as f:
                json.dump(summ, f, indent=1)
        plot(self.csv_path, a.png, self.restarts, summ)
        print()
        print("== soak summary (%d min, %d events/s target: WS %d + HTTP %d + MQTT %d; broker restart every %ds)" % (
            a.minutes, a.rate, self.rates["ws"], self.rates["http"], self.rates["mqtt"], a.restart_every))
        r, fd, tk = summ["rss_mb"], summ["fds"], summ["tasks"]
        print("RSS      first %.1f MB, last %.1f MB, max %.1f MB (max first third %.1f, last third %.1f)" % (
            r["first"], r["last"], r["max"], r["max_first_third"], r["max_last_third"]))
        print("fds      min %d, max %d (first %d, last %d)" % (fd["min"], fd["max"], fd["first"], fd["last"]))
        if tk is None:
            print("tasks    not sampled (no kgate_runtime_tasks); threads %d-%d" % (summ["threads"]["min"], summ["threads"]["max"]))
        else:
            print("tasks    min %d, max %d (first %d, last %d); threads %d-%d" % (
                tk["min"], tk["max"], tk["first"], tk["last"], summ["threads"]["min"], summ["threads"]["max"]))
        p = summ["p99_ms"]
        print("p99      accept->ack per 10 s window: median %s ms, max %s ms; away from restarts (%d windows "
              "with the broker up in them and the 60 s before): median %s ms, max %s ms" % (
                  r1(p["median"]), r1(p["max"]), p["calm_windows"], r1(p["calm_median"]), r1(p["calm_max"])))
        print("events/s in: mean %s (mean while the broker was up %s), target %d" % (
            summ["in_per_s"]["mean"], summ["in_per_s"]["mean_broker_up"], a.rate))
        for x in self.restarts:
            print("restart  %d at t=%ss: stop %ss, back after %ss" % (x["n"], x["down_at_s"], x["stopped_s"], x["up_after_s"]))
        print("| source | sent | accepted | in Kafka (distinct) | lost | duplicates |")
        print("|---|---|---|---|---|---|")
        # (HTTP: records answered 429/503 were not accepted; some 503'd ones may be in Kafka.)
        for s, c in counts.items():
            print("| %s | %d | %d | %d | %d | %d |" % (s, c["sent"], c["accepted"], c["distinct"], c["lost"], c["dups"]))
        print("CSV %s, plot %s, summary %s" % (self.csv_path, a.png, os.path.join(self.work, "summary.json")))
        if problems:
            print("FAILED:")
            for x in problems:
                print("  - " + x)
            return 1
        print("OK: nothing lost, no growth beyond the tolerances")
        return 0


# ----------------------------------------------------------------------------- the plot


def tasks_summary(rows, first, last):
    """min/max/first/last of the sampled tasks, or None when the binary has no gauge."""
    has = [r for r in rows if r.get("tasks") not in (None, "")]
    if not has:
        return None
    f = [r["tasks"] for r in first if r.get("tasks") not in (None, "")] or [has[0]["tasks"]]
    la = [r["tasks"] for r in last if r.get("tasks") not in (None, "")] or [has[-1]["tasks"]]
    return {"min": min(r["tasks"] for r in has), "max": max(r["tasks"] for r in has),
            "max_first_third": max(f), "max_last_third": max(la),
            "first": has[0]["tasks"], "last": has[-1]["tasks"]}


def r1(x):
    return None if x is None else round(x, 1)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def plot(csv_path, png, restarts=None, summ=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_csv(csv_path)

    def col(name):
        xs, ys = [], []
        for r in rows:
            if r.get(name) not in ("", None):
                xs.append(float(r["t_s"]) / 60)
                ys.append(float(r[name]))
        return xs, ys

    marks, ups = [], []
    for r in rows:
        for m in (r.get("restart_at_s") or "").split(";"):
            if m:
                marks.append(float(m) / 60)
        for m in (r.get("broker_up_at_s") or "").split(";"):
            if m:
                ups.append(float(m) / 60)
    end = float(rows[-1]["t_s"]) / 60 if rows else 0
    fig, ax = plt.subplots(4, 1, figsize=(11, 12), sharex=True)
    x, y = col("rss_mb")
    ax[0].plot(x, y, color="tab:blue")
    ax[0].set_ylabel("RSS (MB)")
    ax[0].set_ylim(bottom=0)
    x, y = col("fds")
    ax[1].plot(x, y, label="open fds", color="tab:green")
    x, y = col("tasks")
    ax[1].plot(x, y, label="tokio tasks", color="tab:purple")
    x, y = col("threads")
    ax[1].plot(x, y, label="threads", color="tab:gray", linestyle=":")
    ax[1].set_ylabel("count")
    ax[1].set_ylim(bottom=0)
    ax[1].legend(loc="upper left", fontsize=8)
    x, y = col("p99_ms")
    ax[2].plot(x, y, color="tab:red", label="p99 (all sources)")
    for s, c in (("ws", "tab:orange"), ("http", "tab:olive"), ("mqtt", "tab:cyan")):
        x, y = col("p99_%s_ms" % s)
        ax[2].plot(x, y, color=c, linewidth=0.8, alpha=0.7, label="p99 %s" % s)
    ax[2].set_yscale("log")
    ax[2].set_ylabel("p99 accept→ack (ms)\nper 10 s window")
    ax[2].legend(loc="upper left", fontsize=8)
    x, y = col("in_per_s")
    ax[3].plot(x, y, label="in (handed to the producer)", color="tab:blue")
    x, y = col("out_per_s")
    ax[3].plot(x, y, label="out (acknowledged by Kafka)", color="tab:green", alpha=0.8)
    ax[3].set_ylabel("events/s")
    ax[3].set_xlabel("minutes")
    ax[3].set_ylim(bottom=0)
    ax[3].legend(loc="upper left", fontsize=8)
    for a in ax:
        for i, m in enumerate(marks):
            a.axvline(m, color="black", linestyle="--", linewidth=0.8, alpha=0.6,
                      label="broker restart (shaded: down)" if (a is ax[0] and i == 0) else None)
            a.axvspan(m, ups[i] if i < len(ups) else end, color="gray", alpha=0.15)
        a.grid(alpha=0.3)
    if marks:
        ax[0].legend(loc="upper left", fontsize=8)
    title = "kgate soak: RSS, fds/tasks, p99 accept→ack, rate (dashed: Kafka broker restarts)"
    if summ:
        lost = sum(c["lost"] for c in summ["sources"].values())
        title += "\n%d min, target %d events/s (WS %d, HTTP %d, MQTT %d); lost %d" % (
            summ["minutes"], summ["rate"], summ["rates"]["ws"], summ["rates"]["http"], summ["rates"]["mqtt"], lost)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "plot":
        summ = None
        if len(sys.argv) > 4:  # a run's summary.json: its figures go into the title
            with open(sys.argv[4]) as f:
                summ = json.load(f)
        plot(sys.argv[2], sys.argv[3], summ=summ)
        return 0
    p = argparse.ArgumentParser(prog="soak.py run")
    p.add_argument("cmd", choices=["run"])
    p.add_argument("--kgate", required=True)
    p.add_argument("--repo", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--rate", type=int, default=20000)
    p.add_argument("--restart-every", type=int, default=300)
    p.add_argument("--sample", type=int, default=10)
    p.add_argument("--split", default="50,25,25")
    p.add_argument("--partitions", type=int, default=3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--rss-growth-pct", type=int, default=20)
    p.add_argument("--fd-slack", type=int, default=16)
    p.add_argument("--task-slack", type=int, default=16)
    p.add_argument("--csv", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--summary", default="")
    p.add_argument("--command", default="scripts/soak")
    a = p.parse_args()
    parts = [float(x) for x in a.split.split(",")]
    if len(parts) != 3 or sum(parts) <= 0:
        p.error("--split takes three numbers: WS,HTTP,MQTT")
    a.split = [x / sum(parts) for x in parts]
    s = Soak(a)

    def on_signal(sig, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt("signal %d" % sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return s.run()
    except KeyboardInterrupt as e:
        log("interrupted (%s): cleaning up" % e)
        return 130
    except Exception as e:  # noqa: BLE001 - reported, then cleaned up
        log("error: %s" % e)
        import traceback

        traceback.print_exc()
        return 2
    finally:
        s.cleanup()


if __name__ == "__main__":
    sys.exit(main())
