"""One error hierarchy for the balancer, and the spec's JSON failure body built in one place.

Every error a caller can cause carries an HTTP status and a message a person can act on;
the admin API and the proxy turn them into ``{"message": "<Error> ...", "status": "failure"}``.
"""

from __future__ import annotations

from typing import Any

#: Seconds a 503 of the admin API asks the client to wait before it tries again, sent as
#: ``Retry-After`` (RFC 9110 15.6.4; delay-seconds, 10.2.3). The backend's state is checked
#: again by each call and nothing here knows when an engine comes back: the shortest wait.
RETRY_AFTER = 1


class LbproxyError(Exception):
    """Base of every error the balancer reports to a client."""

    status: int = 500
    #: ``Retry-After`` of the answer when it is a 503; None sends none (``ShuttingDown``).
    retry_after: int | None = RETRY_AFTER

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(LbproxyError):
    """The caller sent something malformed or out of range."""

    status = 400


class Unauthorized(LbproxyError):
    """A mutating admin call without the right bearer token."""

    status = 401


class NotFound(LbproxyError):
    """A name the pool does not hold."""

    status = 404


class Conflict(LbproxyError):
    """The request is well formed but clashes with the pool's state (name taken, ring full)."""

    status = 409


class RingFullError(Conflict):
    """A replica cannot be placed on the ring (every probe slot taken, or no slot left)."""


class EmptyRingError(LbproxyError):
    """A lookup on a ring that holds no replica: the pool has nobody to serve."""

    status = 503


class BackendError(LbproxyError):
    """The replica backend (process spawner, Docker engine) failed to do what was asked."""

    status = 502


class ShuttingDown(BackendError):
    """The balancer is shutting down and changes its pool no more.

    A 503 without ``Retry-After``: that header says the service is expected back at this
    address after the delay (RFC 9110 10.2.3), and a balancer on its way out promises
    nothing of the kind (whether anything replaces it is its supervisor's business).
    """

    status = 503
    retry_after = None


class NoReplicaAvailable(LbproxyError):
    """Every candidate replica failed for this request."""

    status = 502


def failure_body(message: str) -> dict[str, Any]:
    """The spec's failure shape; the ``<Error>`` prefix is added once, here."""
    text = message if message.startswith("<Error>") else f"<Error> {message}"
    return {"message": text, "status": "failure"}
