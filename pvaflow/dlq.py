"""Dead-letter records: the original record, untouched, plus why and where it failed.

Headers carry the reason so an operator can ``kcat -C -t frames.dlq -f '%h'`` and see what
went wrong without decoding anything; the value and key are the input's, so a fixed plugin can
replay the DLQ topic as input.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

from confluent_kafka import Message

REASON = "pf.dlq.reason"
STAGE = "pf.dlq.stage"  # decode | process | output
ERROR = "pf.dlq.error"  # exception type
ORIGIN = "pf.dlq.origin"  # topic/partition/offset
CONSUMER = "pf.dlq.consumer"
TIME = "pf.dlq.time"
TRACE = "pf.dlq.trace"
MAX_REASON = 1000


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
    ]
    return list(msg.headers() or []) + extra
