"""The metadata that makes each ``Config`` field the one declaration of its setting.

A field declared with :func:`setting` carries its flag, help, parser, bounds and choices;
``lbproxy serve``'s options, the ``LBPROXY_*`` variables, ``Config.validate()``'s bounds and
the README's flag table are all generated from it, so adding a setting is one edit in
config.py. This module knows nothing of argparse or of the balancer: it walks dataclasses.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "ENV_PREFIX",
    "Setting",
    "build",
    "check_bounds",
    "count",
    "get_path",
    "replace_path",
    "seconds",
    "setting",
    "shown_default",
    "walk",
]

ENV_PREFIX = "LBPROXY_"

T = TypeVar("T")
F = TypeVar("F", bound=float | None)
N = TypeVar("N", bound=int | None)


@dataclass(frozen=True, slots=True)
class Setting:
    """How one ``Config`` field is set from outside, checked and documented."""

    #: ``--heartbeat-interval``; None for a field no flag sets (derived or set by another).
    flag: str | None
    help: str
    #: str -> value; raises ValueError (or argparse.ArgumentTypeError) with a reason.
    parse: Callable[[str], Any] = str
    #: Inclusive/exclusive numeric bounds, checked by the parser and by validate().
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: Keep the value out of --help (a token read from the environment).
    secret: bool = False
    #: Repeatable flag; its variable holds several, shell-quoted and spaced.
    repeat: bool = False
    #: ``--flag`` alone means on; ``--flag off`` / ``LBPROXY_FLAG=0`` off.
    switch: bool = False
    #: The value when neither flag nor variable gives one, computed from the whole config
    #: (after every given value is in): a default that depends on other settings.
    auto: Callable[[Any], Any] | None = None
    #: One flag that sets several fields of its section: value -> {field: value}.
    expand: Callable[[Any], dict[str, Any]] | None = None
    #: How the default reads in --help and the README when ``str(default)`` would not do.
    shown: str | None = None
    #: The README's meaning cell (Markdown), when it says more than ``help``.
    doc: str | None = None
    #: Unit appended to a numeric default in the README ("s", "MiB").
    unit: str = ""

    @property
    def env(self) -> str:
        """``--heartbeat-interval`` -> ``LBPROXY_HEARTBEAT_INTERVAL``."""
        assert self.flag is not None
        return ENV_PREFIX + self.flag.lstrip("-").replace("-", "_").upper()

    @property
    def given_default(self) -> bool:
        """False when an unset flag means "compute it" (``auto``) or "leave it" (``expand``)."""
        return self.auto is None and self.expand is None

    def bounds_error(self, value: Any) -> str | None:
        """Why ``value`` is outside this setting's bounds or choices, or None."""
        if self.choices is not None and isinstance(value, str) and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        if isinstance(value, float) and math.isnan(value):
            return "must be a number, got nan"
        low_ok = (self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
        if low_ok and (self.le is None or value <= self.le):
            return None
        return f"{_bounds_phrase(self)}, got {value:g}"

    def convert(self, text: str) -> Any:
        """Parse ``text`` and check its bounds; ValueError with one sentence otherwise."""
        try:
            value = self.parse(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            if self.parse in (int, float):
                kind = "a whole number" if self.parse is int else "a number"
                raise ValueError(f"{text!r} is not {kind}") from None
            raise ValueError(str(exc)) from None
        problem = self.bounds_error(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def _bounds_phrase(s: Setting) -> str:
    if s.gt == 0 and s.le is None:
        return "must be positive"
    if s.ge == 0 and s.le is None:
        return "must not be negative"
    low = s.ge if s.ge is not None else s.gt
    if low is not None and s.le is not None:
        return f"must be from {low:g} to {s.le:g}"
    if s.gt is not None:
        return f"must be greater than {s.gt:g}"
    if s.ge is not None:
        return f"must be at least {s.ge:g}"
    return f"must be at most {s.le:g}"


def setting(default: T, flag: str | None, help: str, **options: Any) -> T:
    """A dataclass field with a :class:`Setting` in its metadata (typed as its default)."""
    meta = {"setting": Setting(flag, help, **options)}
    return field(default=default, metadata=meta)


def _section(f: dataclasses.Field[Any]) -> type | None:
    factory = f.default_factory
    if factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory):
        return factory
    return None


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Setting]]:
    """Every declared setting of ``cls`` and its sections, as (dotted path, field, setting)."""
    for f in dataclasses.fields(cls):
        section = _section(f)
        if section is not None:
            yield from walk(section, f"{prefix}{f.name}.")
        elif "setting" in f.metadata:
            yield f"{prefix}{f.name}", f, f.metadata["setting"]


def get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def replace_path(obj: T, path: str, value: Any) -> T:
    """A copy of the frozen ``obj`` with the field at dotted ``path`` set to ``value``."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})  # type: ignore[type-var]
    inner = replace_path(getattr(obj, head), rest, value)
    return dataclasses.replace(obj, **{head: inner})  # type: ignore[type-var]


def check_bounds(obj: Any) -> str | None:
    """The first field of ``obj`` outside its declared bounds, as one sentence, or None."""
    for path, _f, s in walk(type(obj)):
        value = get_path(obj, path)
        if value is None:
            continue
        problem = s.bounds_error(value)
        if problem is not None:
            name = s.flag or path
            return f"{name} {problem}"
    return None


def build(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """``cls`` with the fields named in ``values`` (dotted paths) set, the rest defaulted."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        section = _section(f)
        path = prefix + f.name
        if section is not None:
            kwargs[f.name] = build(section, values, path + ".")
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def shown_default(s: Setting, value: Any, declared: Any) -> str:
    """How ``value`` reads in --help and the README (``shown`` when it is the default)."""
    if s.shown is not None and (value == declared if s.given_default else value is None):
        return s.shown
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


#: The README's flag table sits between these lines; scripts/readme_flags.py rewrites it.
TABLE_BEGIN = "<!-- flag table: generated from lbproxy/config.py by scripts/readme_flags.py -->"
TABLE_END = "<!-- end of flag table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_cell(s: Setting, value: Any) -> str:
    if s.shown is not None or value is None or isinstance(value, (bool, tuple)):
        return shown_default(s, value, value)
    if isinstance(value, (int, float)):
        return f"{value:g}" + (f" {s.unit}" if s.unit else "")
    return f"`{value}`" if value else "none"


def flag_table(cls: type) -> str:
    """The Markdown flag table of ``cls``'s settings: one row per flag, declaration order."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for _path, f, s in walk(cls):
        if s.flag is None:
            continue
        flag = f"`{s.flag} {s.metavar}`" if s.metavar and s.metavar.isupper() else f"`{s.flag}`"
        if s.metavar and not s.metavar.isupper() and not s.metavar.startswith("{"):
            flag = f"`{s.flag} {s.metavar}`"
        value = f.default if s.given_default else None
        meaning = s.doc or s.help
        if s.doc is None and s.choices is not None:
            meaning += ": " + ", ".join(f"`{choice}`" for choice in s.choices)
        rows.append(f"| {flag} | {_cell(_default_cell(s, value))} | {_cell(meaning)} |")
    return "\n".join(rows)


def replace_table(text: str, table: str) -> str:
    """``text`` (the README) with the part between the markers replaced by ``table``."""
    head, begin, rest = text.partition(TABLE_BEGIN)
    _old, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise ValueError(f"the README has no {TABLE_BEGIN!r} ... {TABLE_END!r} block")
    return f"{head}{begin}\n{table}\n{end}{tail}"


def seconds(default: F, flag: str | None, help: str, *, zero_ok: bool = False, **options: Any) -> F:
    """A duration setting: a float in seconds, positive (or ``zero_ok``: not negative)."""
    bound = {"ge": 0} if zero_ok else {"gt": 0}
    return setting(default, flag, help, parse=float, unit="s", **bound, **options)


def count(default: N, flag: str | None, help: str, *, zero_ok: bool = False, **options: Any) -> N:
    """A whole-number setting, positive (or ``zero_ok``: not negative)."""
    bound = {"ge": 0} if zero_ok else {"gt": 0}
    return setting(default, flag, help, parse=int, **bound, **options)
