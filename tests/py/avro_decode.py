#!/usr/bin/env python3
"""Independent decoder for the Avro tests: reads Confluent wire-format records as hex, one per
line on stdin, fetches each writer schema by id from the registry (GET /schemas/ids/{id}) and
decodes with fastavro. Prints one JSON object per line: {"id": .., "value": ..}. Logical types
come back as Python objects and are printed as strings (datetimes in ISO 8601, decimals as text).

usage: avro_decode.py REGISTRY_URL < records.hex
"""
import base64
import datetime
import decimal
import io
import json
import struct
import sys
import urllib.request
import uuid

import fastavro


def main():
    registry = sys.argv[1].rstrip("/")
    schemas = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        data = bytes.fromhex(line)
        if len(data) < 5 or data[0] != 0:
            print(json.dumps({"error": "not Confluent wire format"}))
            continue
        (sid,) = struct.unpack(">I", data[1:5])
        if sid not in schemas:
            with urllib.request.urlopen(f"{registry}/schemas/ids/{sid}") as r:
                text = json.load(r)["schema"]
            schemas[sid] = fastavro.parse_schema(json.loads(text))
        buf = io.BytesIO(data[5:])
        value = fastavro.schemaless_reader(buf, schemas[sid])
        rest = len(data) - 5 - buf.tell()
        print(json.dumps({"id": sid, "value": value, "trailing": rest}, default=plain))


def plain(o):
    if isinstance(o, (datetime.datetime, datetime.date, datetime.time)):
        return o.isoformat()
    if isinstance(o, decimal.Decimal):
        return str(o)
    if isinstance(o, uuid.UUID):
        return str(o)
    if isinstance(o, bytes):
        return base64.b64encode(o).decode()
    raise TypeError(f"cannot print {type(o)}")


if __name__ == "__main__":
    main()
