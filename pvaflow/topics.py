"""Topic creation and checks, shared by every component that owns a topic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .settings import admin_config


class TopicError(RuntimeError):
    """A topic exists with a shape that contradicts what the command was asked for."""


def ensure_topic(
    name: str,
    partitions: int = 1,
    *,
    bootstrap: str | None = None,
    overrides: Any = None,
    config: Mapping[str, str] | None = None,
    strict: bool = True,
    admin: AdminClient | None = None,
) -> int:
    """Create ``name`` with ``partitions`` if missing; returns its partition count.

    With ``strict`` an existing topic with another count is refused: the distributor plan
    depends on the count, and silently reusing a different one would misroute frames.
    """
    if admin is None:  # an AdminClient with an empty queue is falsy: test identity
        admin = AdminClient(admin_config(bootstrap, overrides))
    # Ask for all topics: a metadata request naming a missing topic lets a broker with
    # auto.create.topics.enable (the default) create it with its default partition count.
    meta = admin.list_topics(timeout=15)
    existing = meta.topics.get(name)
    if existing is not None and existing.error is None:
        count = len(existing.partitions)
        if strict and count != partitions:
            raise TopicError(
                f"topic {name!r} exists with {count} partitions, not {partitions}: "
                f"use --partitions {count} or another --topic"
            )
        return count
    new = NewTopic(name, partitions, replication_factor=-1, config=dict(config or {}))
    fut = admin.create_topics([new])[name]
    try:
        fut.result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    return partitions
