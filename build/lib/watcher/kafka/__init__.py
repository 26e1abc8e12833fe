"""Kafka adapters: the transactional sink, dead letters, address registrations, topics."""

from watcher.kafka.client import connection_kwargs, describe, ensure_topics
from watcher.kafka.registrations import RegistrationFollower
from watcher.kafka.sink import DeadLetterWriter, KafkaTransactionalSink

__all__ = [
    "DeadLetterWriter",
    "KafkaTransactionalSink",
    "RegistrationFollower",
    "connection_kwargs",
    "describe",
    "ensure_topics",
]
