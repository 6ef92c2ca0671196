"""A bounded log of what happened to the pool, for operators, the dashboard and analysis A-3.

Events carry wall-clock timestamps so a client outside the balancer (the analysis killing a
replica) can line its own clock up with the balancer's detection and recovery times.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

#: Event kinds, in the order a replacement goes through them.
KINDS = (
    "launched",  # a replica incarnation was started by the backend
    "up",  # it passed its heartbeats and joined the ring
    "first_response",  # it answered its first proxied request
    "died",  # the backend saw the incarnation exit (process exit, container die)
    "heartbeat_down",  # the monitor saw `fall` missed heartbeats
    "removed_from_ring",  # it left the ring (down, draining or removed)
    "replacing",  # the reconciler starts a replacement under the same name
    "replace_failed",  # launching the replacement failed; it is retried
    "added",  # an operator added it with /add
    "removed",  # an operator removed it with /rm
    "stopped",  # its process/container was stopped on purpose
    "adopted",  # found running from an earlier balancer and reused
    "autoscale",  # an autoscaler decision (desired vs actual, concurrency) or change
    "cold_start",  # a request held at an empty pool was released (scale from zero)
)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    time: float
    kind: str
    replica: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """The last ``maxlen`` events plus listeners told of each new one (SSE, metrics)."""

    def __init__(self, maxlen: int = 2000) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._seq = 0
        self._listeners: list[Callable[[Event], None]] = []

    def emit(self, kind: str, replica: str, detail: str = "") -> Event:
        self._seq += 1
        event = Event(self._seq, time.time(), kind, replica, detail)
        self._events.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener`` on each new event; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def since(self, seq: int = 0) -> list[Event]:
        return [e for e in self._events if e.seq > seq]
