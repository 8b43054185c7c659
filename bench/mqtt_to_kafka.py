#!/usr/bin/env python3
"""The hand-written alternative to kgate's MQTT source, for scripts/bench-mqtt.

What a user would write first: paho-mqtt subscribes, each message is parsed, gets the device id
from its topic, and is produced with confluent-kafka (librdkafka) with the same producer settings
kgate uses (acks=all, idempotence, zstd, linger.ms 10, batch.size 131072).

Ack semantics, for a fair reading of the numbers: paho acknowledges each QoS 1 message (PUBACK)
as soon as it is received, before Kafka has it, so a crash loses what was received and not yet
delivered (kgate acks only after Kafka's acknowledgement). Malformed JSON is counted and skipped.

Usage: mqtt_to_kafka.py HOST PORT CLIENT_ID FILTER TOPIC BROKERS  (runs until SIGTERM)
"""
import json
import signal
import sys

import paho.mqtt.client as mqtt
from confluent_kafka import Producer


def main():
    host, port, client_id, filt, topic, brokers = sys.argv[1:7]
    producer = Producer({
        "bootstrap.servers": brokers,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "zstd",
        "linger.ms": 10,
        "batch.size": 131072,
        "queue.buffering.max.messages": 10000,
    })
    bad = 0

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(filt, qos=1)

    def on_message(client, userdata, msg):
        nonlocal bad
        try:
            value = json.loads(msg.payload)
        except ValueError:
            bad += 1
            return
        device = msg.topic.split("/")[2]  # <root>/devices/<id>/telemetry
        value["device_id"] = device
        data = json.dumps(value, separators=(",", ":")).encode()
        while True:
            try:
                producer.produce(topic, value=data, key=device.encode())
                break
            except BufferError:
                producer.poll(0.01)  # the buffer is full: wait for deliveries
        producer.poll(0)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False, protocol=mqtt.MQTTv311)
    client.on_connect = on_connect
    client.on_message = on_message
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    client.connect(host, int(port), keepalive=30)
    while not stop:
        client.loop(timeout=0.1)
        producer.poll(0)
    client.disconnect()
    producer.flush(30)
    print(f"bad={bad}", file=sys.stderr)


if __name__ == "__main__":
    main()
