"""Argument types shared by every ``lbproxy`` subcommand, so a bad number reads the same."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def key_source(text: str) -> str:
    """A ``--key`` value, normalised (``header:x-request-id``); one sentence if it is bad."""
    from lbproxy.frontend.routing_key import parse_key

    try:
        return str(parse_key(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def cidr_list(text: str) -> str:
    """``--trusted-proxies``: comma-separated addresses/CIDR networks, checked now."""
    from lbproxy.frontend.forwarded import parse_networks

    try:
        parse_networks(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def boolean(text: str) -> bool:
    """On/off switches that also come from the environment (``LBPROXY_X=1``)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off (1/0, true/false), got {text!r}")


def replica_template(text: str) -> str:
    """A ``--replica-cmd`` template that can run; one sentence if it cannot."""
    from lbproxy.backends.command import validate_template

    try:
        return validate_template(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def env_pair(text: str) -> str:
    """A ``--replica-env KEY=VALUE``; one sentence if it is not one."""
    from lbproxy.backends.command import parse_env_pair

    try:
        parse_env_pair(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text}")
    return value


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


def percent(text: str) -> int:
    """An integer percentage, 0 to 100."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole percentage") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 100")
    return value
