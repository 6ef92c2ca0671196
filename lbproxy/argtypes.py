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


def boolean(text: str) -> bool:
    """On/off switches that also come from the environment (``LBPROXY_X=1``)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off (1/0, true/false), got {text!r}")
