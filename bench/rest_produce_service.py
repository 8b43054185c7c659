#!/usr/bin/env python3
"""The simplest alternative to kgate's HTTP source a user would write: a REST-Proxy-shaped
POST /topics/<topic> on Python's standard http.server (one thread per connection) with a
confluent-kafka Producer, answering each request after flush() so that the answer means "in
Kafka". Same producer settings as kgate's defaults. Used by scripts/bench-http.

    python3 bench/rest_produce_service.py --listen 127.0.0.1:8090 --brokers 127.0.0.1:9092
"""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1:8090")
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--linger-ms", type=int, default=10)
    args = ap.parse_args()
    producer = Producer({
        "bootstrap.servers": args.brokers,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "zstd",
        "linger.ms": args.linger_ms,
        "batch.size": 131072,
        "queue.buffering.max.messages": 10000,
    })

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            if not self.path.startswith("/topics/"):
                return self.reply(404, {"error_code": 404, "message": "not found"})
            topic = self.path[len("/topics/"):]
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                records = json.loads(body)["records"]
            except Exception as e:  # noqa: BLE001
                return self.reply(400, {"error_code": 400, "message": str(e)})
            results = [None] * len(records)

            def on_delivery(i):
                def cb(err, msg):
                    results[i] = (err, msg.partition(), msg.offset())
                return cb

            for i, r in enumerate(records):
                key = r.get("key")
                while True:
                    try:
                        producer.produce(
                            topic,
                            value=json.dumps(r.get("value"), separators=(",", ":")).encode(),
                            key=None if key is None else json.dumps(key, separators=(",", ":")).encode(),
                            on_delivery=on_delivery(i),
                        )
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.flush()
            offsets = []
            ok = True
            for res in results:
                if res is None or res[0] is not None:
                    ok = False
                    offsets.append({"partition": None, "offset": None, "error_code": 50002,
                                    "error": str(res[0]) if res else "not delivered"})
                else:
                    offsets.append({"partition": res[1], "offset": res[2], "error_code": None, "error": None})
            self.reply(200 if ok else 500, {"offsets": offsets, "key_schema_id": None, "value_schema_id": None})

        def reply(self, status, obj):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.kafka.v2+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"listening on {args.listen}", flush=True)
    try:
        server.serve_forever()
    finally:
        producer.flush(10)


if __name__ == "__main__":
    main()
