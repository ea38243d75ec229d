"""Dead-letter records: the original record, untouched, plus why and where it failed.

Headers carry the reason so an operator can ``kcat -C -t frames.dlq -f '%h'`` and see what
went wrong without decoding anything; the value and key are the input's, so a fixed plugin can
replay the DLQ topic as input.

A record too big for the DLQ topic (its ``max.message.bytes``, or the producer's
``message.max.bytes``) is dead-lettered as a *reference* instead: the same headers, no value,
``pf.dlq.copy: reference`` and ``pf.dlq.omitted`` saying why; ``pf.dlq.size`` and
``pf.dlq.origin`` (topic/partition/offset) find the original in the input topic while its
retention lasts. A poison record must never stop its partition, and a copy the DLQ refuses
would (the input offset could never be committed).
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from confluent_kafka import KafkaException, Message
from confluent_kafka.admin import AdminClient, ConfigResource

REASON = "pf.dlq.reason"
STAGE = "pf.dlq.stage"  # decode | process | output
ERROR = "pf.dlq.error"  # exception type
ORIGIN = "pf.dlq.origin"  # topic/partition/offset
CONSUMER = "pf.dlq.consumer"
TIME = "pf.dlq.time"
TRACE = "pf.dlq.trace"
SIZE = "pf.dlq.size"  # bytes of the original value
COPY = "pf.dlq.copy"  # value (the original value follows) | reference (no value)
OMITTED = "pf.dlq.omitted"  # why the value was left out of a reference
MAX_REASON = 1000
# Room for the record batch and record framing around key, value and headers.
FRAMING = 1024


def dlq_headers(msg: Message, stage: str, exc: BaseException, consumer: str) -> list[Any]:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
    extra = [
        (REASON, reason[:MAX_REASON].encode()),
        (STAGE, stage.encode()),
        (ERROR, type(exc).__name__.encode()),
        (ORIGIN, f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()),
        (CONSUMER, consumer.encode()),
        (TIME, f"{time.time():.6f}".encode()),
        (TRACE, tb[-4000:].encode()),
        (SIZE, str(len(msg.value() or b"")).encode()),
        (COPY, b"value"),
    ]
    return list(msg.headers() or []) + extra


def record_size(key: bytes | None, value: bytes | None, headers: list[Any]) -> int:
    """Bytes a record takes in a batch, framing included (an upper bound)."""
    size = FRAMING + len(key or b"") + len(value or b"")
    return size + sum(len(k) + len(v or b"") + 8 for k, v in headers)


def as_reference(headers: list[Any], why: str) -> list[Any]:
    """The headers of a reference record: the value is left out, ``why`` says so."""
    kept = [(k, v) for k, v in headers if k != COPY]
    return [*kept, (COPY, b"reference"), (OMITTED, why[:MAX_REASON].encode())]


def topic_limit(admin: AdminClient, topic: str, timeout: float = 10.0) -> int | None:
    """The topic's ``max.message.bytes``, or None when it cannot be read (a delivery that
    fails with MSG_SIZE_TOO_LARGE is then the signal)."""
    try:
        futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)],
                                         request_timeout=timeout)
        for fut in futures.values():
            entry = fut.result(timeout).get("max.message.bytes")
            if entry is not None and entry.value is not None:
                return int(entry.value)
    except (KafkaException, ValueError, TimeoutError):
        return None
    return None
