#!/usr/bin/env python3
"""The Python consumer kgate's `consume` replaces, for scripts/bench-consume.

What a confluent-kafka service with manual commits (at-least-once) does: poll one message at a
time, process it (json.loads of the value), and commit synchronously
(`commit(asynchronous=False)`) after every COMMIT_EVERY processed messages (default 500; 1 =
after each message, the strictest and much slower form), then once more at the end. A new group
starts at the beginning of the topic (auto.offset.reset=earliest). It stops after --count
messages (or when every assigned partition reached its end, if that comes first) and prints one
JSON line on stdout: {"records": N, "commits": C, "bytes": B, "json_errors": E}.

    python bench/consume_manual_commit.py --brokers 127.0.0.1:9092 --topic T --group G \
        --count 1000000 [--commit-every 500]
"""

import argparse
import json
import sys

from confluent_kafka import Consumer, KafkaError, KafkaException


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--count", type=int, required=True, help="stop after this many messages")
    ap.add_argument("--commit-every", type=int, default=500,
                    help="synchronous commit after this many processed messages (1 = per message)")
    args = ap.parse_args()

    c = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    })
    c.subscribe([args.topic])
    records = commits = nbytes = json_errors = 0
    uncommitted = 0
    assigned_eof = set()
    try:
        while records < args.count:
            msg = c.poll(1.0)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    assigned_eof.add(msg.partition())
                    parts = c.assignment()
                    if parts and all(tp.partition in assigned_eof for tp in parts):
                        break
                    continue
                raise KafkaException(err)
            assigned_eof.discard(msg.partition())
            value = msg.value()
            nbytes += len(value or b"")
            try:
                json.loads(value)
            except ValueError:
                json_errors += 1
            records += 1
            uncommitted += 1
            if uncommitted >= args.commit_every:
                c.commit(asynchronous=False)
                commits += 1
                uncommitted = 0
        if uncommitted:
            c.commit(asynchronous=False)
            commits += 1
    finally:
        c.close()
    print(json.dumps({"records": records, "commits": commits, "bytes": nbytes, "json_errors": json_errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
