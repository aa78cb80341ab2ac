"""Reads posflow topics the way an analyst's stock tooling does: confluent-kafka's Consumer and
AvroDeserializer against the schema registry (docs/topics.md). No posflow code is involved.

Usage: read_topics.py BROKERS REGISTRY_URL TOPIC...

Prints one JSON line per committed record, every partition from the beginning to its end:
{"topic", "partition", "offset", "key", "value"}. fastavro turns timestamp-millis into
datetimes; they are printed back as milliseconds since the epoch, and bytes as lists of
integers, so the lines compare with what posflow wrote.
"""
import datetime
import json
import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(value):
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(value, bytes):
        return list(value)
    raise TypeError(f"no JSON form for {type(value).__name__}")


def read(consumer, deserialize, topic):
    metadata = consumer.list_topics(topic, timeout=30).topics[topic]
    if metadata.error is not None:
        raise SystemExit(f"{topic}: {metadata.error}")
    partitions = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
    consumer.assign(partitions)
    at_end = set()
    while len(at_end) < len(partitions):
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            if message.error().code() == KafkaError._PARTITION_EOF:
                at_end.add(message.partition())
                continue
            raise SystemExit(f"{topic}: {message.error()}")
        value = deserialize(message.value(), SerializationContext(topic, MessageField.VALUE))
        key = message.key()
        print(json.dumps({
            "topic": topic,
            "partition": message.partition(),
            "offset": message.offset(),
            "key": key.decode() if key is not None else None,
            "value": value,
        }, default=plain))


def main():
    brokers, registry_url, *topics = sys.argv[1:]
    # A timeout, so a registry that stalls fails the read instead of hanging it (the client
    # waits for ever by default). The subject strategy named, because confluent-kafka 2.16's
    # default first asks the registry for "associations", an endpoint Confluent added recently
    # and Apicurio does not serve (it answers 404 and the client falls back): one more request
    # per read for nothing.
    registry = SchemaRegistryClient({"url": registry_url, "timeout": 10})
    deserialize = AvroDeserializer(
        registry, conf={"subject.name.strategy": topic_subject_name_strategy})
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "posflow-analyst-proof",  # required; nothing is committed
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": True,
    })
    try:
        for topic in topics:
            read(consumer, deserialize, topic)
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
