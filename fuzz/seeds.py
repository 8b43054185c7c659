#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz corpus (fuzz/corpus/<target>/seed-*): the examples'
configs, messages shaped as `kgate synth` sends them (trades, ticker, orderbook, iot), REST
Proxy and /ingest bodies, and WRP msgpack frames as devices send them (the shape of
tests/device.rs). Run from anywhere: `python3 fuzz/seeds.py`. The fuzzers grow the corpus from
these; targets whose input is a structure drawn by `arbitrary` (transform, avro_encode,
mqtt_publish) start from a few raw byte strings."""
import glob
import hashlib
import json
import os
import random
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
rng = random.Random(12)


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


TS = "2026-12-07T12:00:00.123Z"
EXCHANGES = ["binance", "coinbase", "kraken"]
SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOGE-USD"]


def head(feed, seq):
    return '{"feed":"%s","source":"synth-1","seq":%d,"timestamp":"%s",' % (feed, seq, TS)


def market():
    return '"exchange":"%s","symbol":"%s"' % (rng.choice(EXCHANGES), rng.choice(SYMBOLS))


def trade(seq):
    ex = rng.choice(EXCHANGES)
    sym = rng.choice(SYMBOLS)
    issuer = "did:key:z6Mk" + "".join(rng.choice("abcdefghijk123456789") for _ in range(40))
    cred = {
        "@context": ["https://www.w3.org/2018/credentials/v1",
                     "https://w3id.org/security/suites/ed25519-2020/v1"],
        "id": "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        "type": ["VerifiableCredential", "TradeCredential"],
        "issuer": issuer, "issuanceDate": TS,
        "credentialSubject": {"id": "did:key:z6Mkholder", "tradeId": "KR-%012d" % seq,
                              "exchange": ex, "symbol": sym, "side": rng.choice(["buy", "sell"]),
                              "price": "65012.25", "quantity": "0.250000", "executedAt": TS},
        "proof": {"type": "Ed25519Signature2020", "created": TS,
                  "verificationMethod": issuer + "#key", "proofPurpose": "assertionMethod",
                  "proofValue": "z" + "A" * 87},
    }
    return head("trades", seq) + '"exchange":"%s","symbol":"%s","tradeCredential":%s}' % (
        ex, sym, json.dumps(cred, separators=(",", ":")))


def ticker(seq):
    return head("ticker", seq) + market() + ',"bid":65000.12,"ask":65001.50,"last":65001.00,"volume":5012.1234}'


def orderbook(seq):
    lv = lambda: ",".join("[%.2f,%.4f]" % (65000 - i, 0.5 + i) for i in range(5))
    return head("orderbook", seq) + market() + ',"bids":[%s],"asks":[%s]}' % (lv(), lv())


def iot(seq):
    d = seq % 16 + 1
    return head("iot", seq) + ('"device_id":"sensor-%04d","patient_id":"patient-%04d","heart_rate":%d,'
                               '"spo2":97.5,"temperature":36.80,"battery":0.912}') % (d, 1000 + d * 7, 60 + d)


MESSAGES = [trade(1), trade(2), ticker(3), orderbook(4), iot(5), iot(6)[:-1], '{"a":1}', "[]", "x"]

# --- config: every example, and the fuzz pipelines
for f in sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml"))) + [os.path.join(ROOT, "fuzz", "pipelines.yaml")]:
    put("config", open(f).read())
put("config", "pipelines:\n  - name: p\n    source: {websocket: {urls: ['${FEED_URL:-ws://h:1/ws}']}}\n    topic: t.${x}\n    key: $${literal}\n")

# --- ws_frame: feed messages
for m in MESSAGES:
    put("ws_frame", m)

# --- rest_body: selector byte (0: json, 1: binary) + body
for sel, body in [
    (0, '{"records":[{"key":"k 1","value":{ "foo" : "b a\\"r", "n": [1, 2] }},{"value":null,"partition":1}]}'),
    (0, '{"records":[{"value":%s}]}' % trade(7)),
    (1, '{"records":[{"key":"a2V5","value":"S2Fma2E="}]}'),
    (1, '{"records":[{"value":"b2s="},{"value":{"x":1}}]}'),
    (0, '{"records":[]}'),
    (0, '{"value_schema_id":7,"records":[{"value":{"name":"a"}}]}'),
]:
    put("rest_body", bytes([sel]) + body.encode())

# --- ingest: selector byte (media; bit 7: format raw) + body
events = ['{"type":"orders.new","user":{"id":"u1"},"ts":1,"debug":true,"kind":"k","id":7}',
          '{"type":"clicks","x":1}', trade(8), iot(9)]
put("ingest", b"\x01" + events[0].encode())
put("ingest", b"\x01" + ("[" + ",".join(events) + "]").encode())
put("ingest", b"\x03" + "\n".join(events).encode() + b"\n\n")
put("ingest", b"\x01" + "\n".join(events).encode())
put("ingest", b"\x88" + b"raw bytes \x00\xff")
put("ingest", b"\x01" + b'{"a":1} {"b":2}')


# --- wrp_decode: msgpack maps as tests/device.rs writes them (rmp_serde::to_vec_named)
def mp(v):
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v if len(v) < 256 else b"\xc5" + struct.pack(">H", len(v)) + v
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32:
            return bytes([0xA0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b if len(b) < 256 else b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, list):
        return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)


for msg in [
    {"msg_type": 4, "source": "mac:112233445566", "dest": "event:device-status/mac:112233445566/online",
     "transaction_uuid": "c2bb1f16-09c8-4f2b-a0c8-3e7d3d1b7a8f", "content_type": "application/json",
     "partner_ids": ["comcast"], "headers": ["h1"], "metadata": {"/boot-time": "1700000000"},
     "payload": iot(10).encode()},
    {"msg_type": 3, "source": "dns:talaria", "dest": "mac:112233445566/config", "content_type": "text/plain",
     "status": 200, "payload": b"hello"},
    {"msg_type": 4, "source": "mac:1", "dest": "event:telemetry", "content_type": "application/json",
     "payload": trade(11).encode()},
    {"msg_type": 11, "source": "x", "dest": "y", "spans": [["a", 1, 2]], "qos": 25, "rdr": 0},
    {"msg_type": 99},
]:
    put("wrp_decode", mp(msg))

# --- structured targets: a few raw byte strings to start from
for t in ["transform", "avro_encode", "mqtt_publish"]:
    for n in [16, 64, 256, 1024]:
        put(t, bytes(rng.getrandbits(8) for _ in range(n)))
    for m in MESSAGES[:3]:
        put(t, m)
