"""The admin API declared once: its operations and their request bodies.

Each body is a dataclass; a field's metadata (JSON type, bounds, description) gives both
the strict parser the handlers use (:func:`parse`: every bad input is a ``BadRequest``
with one sentence, which ``admin._guard`` turns into SPEC's 400 body) and the OpenAPI
schema served at /lbproxy/openapi.json (:func:`schema`). A field without a default is
required. Each :class:`Operation` is routed by admin.py and documented by
views/openapi.py from the same declaration.

Plain dataclasses rather than pydantic or msgspec: three small bodies need ~100 lines, and
the balancer stays free of a compiled dependency (issue 13).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from lbproxy.config import MAX_CHANGE_PER_CALL
from lbproxy.control.pool import MAX_WEIGHT
from lbproxy.errors import BadRequest

__all__ = [
    "AddRequest",
    "BodyField",
    "ChangeRequest",
    "Operation",
    "WeightRequest",
    "parse",
    "schema",
]

T = TypeVar("T")

JsonType = Literal["integer", "string", "array"]


@dataclass(frozen=True, slots=True)
class BodyField:
    """How one field of a JSON body is typed, bounded and described."""

    kind: JsonType
    description: str
    minimum: int | None = None
    maximum: int | None = None
    #: ``null`` is accepted and means the default (``"hostnames": null``).
    nullable: bool = False

    def check(self, name: str, value: Any) -> Any:
        """``value`` if it fits, else ``BadRequest`` naming the field and what it got."""
        if self.kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f'"{name}" must be an integer, got {_shown(value)}')
            low, high = self.minimum, self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                raise BadRequest(f'"{name}" must be from {low} to {high}, got {value}')
            return value
        if self.kind == "string":
            if not isinstance(value, str):
                raise BadRequest(f'"{name}" must be a string, got {_shown(value)}')
            return value
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise BadRequest(f'"{name}" must be a list of strings')
        return tuple(value)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind}
        if self.kind == "array":
            out["items"] = {"type": "string"}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.nullable:
            out["nullable"] = True
        out["description"] = self.description
        return out


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def body_field(spec: BodyField, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying ``spec``; without ``default`` the field is required."""
    return field(default=default, metadata={"body": spec})


_N = BodyField(
    "integer",
    "How many replicas to add or remove in this call.",
    minimum=0,
    maximum=MAX_CHANGE_PER_CALL,
)
_HOSTNAMES = BodyField(
    "array",
    "Names to use (/add) or remove (/rm) first; at most `n` (null or absent: none). Names "
    "are 1-63 characters from letters, digits, '_', '.', '-' starting with a letter or "
    "digit (the process backend also allows inner spaces, as in 'Server 1'); a name the "
    "backend cannot run is a 400.",
    nullable=True,
)


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """The body of /rm (and, with a weight, of /add): SPEC's ``{"n": 3, "hostnames": [...]}``."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"n": 3, "hostnames": ["S5", "S4"]}

    n: int = body_field(_N)
    hostnames: tuple[str, ...] = body_field(_HOSTNAMES, ())


@dataclass(frozen=True, slots=True)
class AddRequest(ChangeRequest):
    """The body of /add: /rm's fields and an optional weight for the new replicas."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]}

    weight: int = body_field(
        BodyField(
            "integer",
            "Each new replica's share of the keys relative to weight-1 replicas (default 1; "
            "maglev and hashring only: the seed families answer 400). Change it later with "
            "PUT /lbproxy/weight.",
            minimum=1,
            maximum=MAX_WEIGHT,
        ),
        1,
    )


@dataclass(frozen=True, slots=True)
class WeightRequest:
    """The body of PUT /lbproxy/weight: one replica's new weight."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"hostname": "S5", "weight": 3}

    hostname: str = body_field(BodyField("string", "The replica whose weight changes."))
    weight: int = body_field(
        BodyField(
            "integer",
            "Its share of the keys relative to weight-1 replicas; keys move only to or "
            "from it (maglev and hashring only).",
            minimum=1,
            maximum=MAX_WEIGHT,
        )
    )


def _example(model: type) -> str:
    return json.dumps(getattr(model, "EXAMPLE", {}))


def parse(model: type[T], payload: Any) -> T:
    """``payload`` (decoded JSON) as a ``model``; ``BadRequest`` with one sentence if not."""
    if not isinstance(payload, dict):
        raise BadRequest(f"body must be a JSON object such as {_example(model)}")
    fields = dataclasses.fields(model)  # type: ignore[arg-type]
    names = [f.name for f in fields]
    unknown = set(payload) - set(names)
    if unknown:
        raise BadRequest(
            f"unknown field(s): {', '.join(sorted(unknown))}; expected {', '.join(names)}"
        )
    values: dict[str, Any] = {}
    for f in fields:
        spec: BodyField = f.metadata["body"]
        value = payload.get(f.name)
        if f.name not in payload or (value is None and spec.nullable):
            if f.default is dataclasses.MISSING:
                raise BadRequest(
                    f'missing field "{f.name}"; the body must be like {_example(model)}'
                )
            continue
        values[f.name] = spec.check(f.name, value)
    return model(**values)


def schema(model: type) -> dict[str, Any]:
    """The OpenAPI 3.0 schema of ``model``: exactly what :func:`parse` accepts."""
    fields = dataclasses.fields(model)
    out: dict[str, Any] = {
        "type": "object",
        "description": (model.__doc__ or "").strip().splitlines()[0],
        "additionalProperties": False,
        "properties": {f.name: f.metadata["body"].schema() for f in fields},
        "example": getattr(model, "EXAMPLE", None),
    }
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    if required:
        out["required"] = required
    return out


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint the balancer answers itself: how it is routed and documented.

    admin.py registers its operations from these declarations and views/openapi.py builds
    the OpenAPI document from the same list, so a route cannot exist undocumented.
    """

    method: str
    path: str
    operation_id: str
    summary: str
    #: Name of the handler method on ``AdminRoutes`` (None: registered by a view module).
    handler: str | None = None
    tag: str = "operator"
    description: str = ""
    #: The request body's model (parsed with :func:`parse`, documented with :func:`schema`).
    body: type | None = None
    #: The success answer: a component schema name (or a schema) and its description.
    ok: tuple[str | dict[str, Any], str] = ({"type": "object"}, "")
    #: Its content type; None for an answer without a body (a redirect).
    ok_content: str | None = "application/json"
    ok_status: int = 200
    #: Headers of the success answer, each with its one value (a redirect's Location).
    ok_headers: tuple[tuple[str, str], ...] = ()
    #: A GET that also answers HEAD (aiohttp's default); False for an endless stream.
    head: bool = True
    #: Documented failures (SPEC's body) by status, beyond the 401/413/405 added for all.
    errors: tuple[tuple[int, str], ...] = ()
    #: Headers of those failures, each with its one value: (status, name, value), such as
    #: a 503's ``Retry-After`` (RFC 9110 10.2.3).
    error_headers: tuple[tuple[int, str, str], ...] = ()
    #: Needs ``Authorization: Bearer`` when the balancer has an admin token.
    token: bool = False
    query: tuple[dict[str, Any], ...] = ()
