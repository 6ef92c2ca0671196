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
