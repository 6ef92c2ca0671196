"""Parsers of setting values, shared by every ``lbproxy`` subcommand so a bad value reads the same.

Each takes the text of a flag or ``LBPROXY_*`` variable and returns the value, or raises
``argparse.ArgumentTypeError`` with one sentence. Numeric bounds are not here: config.py
declares them on the field (``gt=0``), and the same bound is checked by the parser and by
``Config.validate()``; ``positive_int`` and friends remain for the tools' own flags.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from lbproxy.settings import Setting

T = TypeVar("T")


def _bounded(
    kind: Callable[[str], T], *, gt: float | None = None, ge: float | None = None
) -> Callable[[str], T]:
    check = Setting(None, "", parse=kind, gt=gt, ge=ge)

    def parse(text: str) -> T:
        try:
            return check.convert(text)  # type: ignore[no-any-return]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


positive_int = _bounded(int, gt=0)
positive_float = _bounded(float, gt=0)
non_negative_int = _bounded(int, ge=0)
non_negative_float = _bounded(float, ge=0)


def _sentence(text: str, check: Callable[[str], Any]) -> Any:
    """``check(text)``, its ValueError turned into argparse's usage error (same sentence)."""
    try:
        return check(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_source(text: str) -> str:
    """A ``--key`` value, normalised (``header:x-request-id``); one sentence if it is bad."""
    from lbproxy.frontend.routing_key import parse_key

    return str(_sentence(text, parse_key))


def cidr_list(text: str) -> str:
    """``--trusted-proxies``: comma-separated addresses/CIDR networks, checked now."""
    from lbproxy.frontend.forwarded import parse_networks

    _sentence(text, parse_networks)
    return text


def replica_template(text: str) -> str:
    """A ``--replica-cmd`` template that can run; one sentence if it cannot."""
    from lbproxy.backends.command import validate_template

    return str(_sentence(text, validate_template))


def env_pair(text: str) -> str:
    """A ``--replica-env KEY=VALUE``; one sentence if it is not one."""
    from lbproxy.backends.command import parse_env_pair

    _sentence(text, parse_env_pair)
    return text


def autoscale_bounds(text: str) -> tuple[int, int]:
    """``--autoscale MIN:MAX``."""
    from lbproxy.control.autoscale import parse_bounds

    return _sentence(text, parse_bounds)  # type: ignore[no-any-return]


def pool_name(text: str) -> str:
    """``--pool``: a name the socket proxy matches exactly (backends/base.py says why)."""
    from lbproxy.backends.base import check_pool_name

    return str(_sentence(text, check_pool_name))


def boolean(text: str) -> bool:
    """On/off switches that also come from the environment (``LBPROXY_X=1``)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off (1/0, true/false), got {text!r}")


def on_off(text: str) -> bool:
    """``on`` or ``off``, nothing else (a switch whose absence means "decide for me")."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def health_path(text: str) -> str:
    """An origin-form path for the heartbeat (``/``, ``/healthz?full=1``)."""
    if not text.startswith("/") or any(c.isspace() or ord(c) < 0x21 for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a request path; give one starting with '/', without spaces"
        )
    return text


def status_range(text: str) -> tuple[int, int]:
    """``2xx``, ``200`` or ``200-399`` as an inclusive ``(low, high)`` status range."""
    raw = text.strip().lower()
    try:
        if len(raw) == 3 and raw.endswith("xx") and raw[0] in "12345":
            low, high = int(raw[0]) * 100, int(raw[0]) * 100 + 99
        elif "-" in raw:
            first, _, last = raw.partition("-")
            low, high = int(first), int(last)
        else:
            low = high = int(raw)
    except ValueError:
        low, high = 0, 0
    if not (100 <= low <= high <= 599):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a status range; write 2xx, 200 or 200-399 (100 to 599)"
        )
    return low, high


def constraint_list(text: str) -> tuple[str, ...]:
    """'node.role==worker, node.labels.zone==a' -> a tuple of constraints ('' -> none)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())
