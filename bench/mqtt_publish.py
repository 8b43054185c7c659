#!/usr/bin/env python3
"""Publishes N telemetry messages at QoS 1 to devices/<id>/telemetry under ROOT, for
scripts/bench-mqtt. Waits until the broker acknowledged all of them.

Usage: mqtt_publish.py HOST PORT ROOT N [DEVICES]
"""
import sys
import time

import paho.mqtt.client as mqtt


def main():
    host, port, root, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    devices = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{root}",
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = 0

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acked
        acked += 1

    client.on_publish = on_publish
    client.connect(host, port, keepalive=30)
    client.loop_start()
    start = time.time()
    for seq in range(1, n + 1):
        d = seq % devices
        payload = ('{"source":"bench","seq":%d,"temp":%.1f,"hr":%d,"battery":0.87,'
                   '"ts":"2026-11-25T19:27:12.375Z","firmware":"1.4.2"}' % (seq, 20 + d / 10, 60 + d % 40))
        client.publish(f"{root}/devices/dev-{d}/telemetry", payload, qos=1)
    while acked < n and time.time() - start < 600:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    print(f"published {acked}/{n} in {time.time() - start:.1f}s", file=sys.stderr)
    sys.exit(0 if acked == n else 1)


if __name__ == "__main__":
    main()
