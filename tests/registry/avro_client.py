#!/usr/bin/env python3
"""Avro records through Python's own Confluent client (an independent
implementation of the wire format and the registry calls), for the Avro
tests: `produce` writes N records plus four bad ones; `consume` prints
N decoded records as JSON lines.

Usage: avro_client.py produce|consume BROKERS TOPIC REGISTRY USER PASSWORD N
"""

import json
import sys
import time

import fastavro
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

mode, brokers, topic, url, user, password, n = sys.argv[1:8]
n = int(n)
client = SchemaRegistryClient({"url": url, "basic.auth.user.info": f"{user}:{password}"})
ctx = SerializationContext(topic, MessageField.VALUE)

RIDE = {
    "type": "record",
    "name": "Ride",
    "namespace": "test",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "city", "type": "string"},
        {"name": "km", "type": ["null", "double"], "default": None},
    ],
}
# Same record name, `id` a string: data written with it does not resolve
# to the reader schema above.
OTHER = dict(RIDE, fields=[{"name": "id", "type": "string"}])


def frame(schema_id, body):
    return b"\x00" + schema_id.to_bytes(4, "big") + body


if mode == "produce":
    serialize = AvroSerializer(client, json.dumps(RIDE))
    producer = Producer({"bootstrap.servers": brokers})
    for i in range(n):
        ride = {"id": i, "city": "zürich" if i % 2 else "oslo", "km": None if i % 5 == 0 else i * 1.5}
        value = serialize(ride, ctx)
        producer.produce(topic, value=value, key=str(i))
        if i == 3:
            producer.produce(topic, value=frame(999, value[5:]), key="unknown-id")
            producer.produce(topic, value=value[:6], key="truncated")
            producer.produce(topic, value=b'{"id": 3}', key="not-avro")
            other = client.register_schema("other-value", Schema(json.dumps(OTHER), "AVRO"))
            import io
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, fastavro.parse_schema(OTHER), {"id": "x"})
            producer.produce(topic, value=frame(other, buf.getvalue()), key="mismatch")
    producer.flush(30)
elif mode == "consume":
    deserialize = AvroDeserializer(client)
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": f"py-{topic}-{time.time()}",
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic])
    got = 0
    deadline = time.time() + 90
    while got < n and time.time() < deadline:
        m = consumer.poll(1.0)
        if m is None or m.error():
            continue
        value = deserialize(m.value(), ctx)
        print(json.dumps({"key": (m.key() or b"").decode(), "value": value}, ensure_ascii=False), flush=True)
        got += 1
    consumer.close()
    sys.exit(0 if got >= n else 1)
