"""The ``lbproxy`` command: a thin shell that maps flags onto ``Config`` and runs it.

``serve``'s options are generated from the settings declared on ``Config`` (config.py,
lbproxy/settings.py): every flag can also come from an ``LBPROXY_<FLAG>`` environment
variable (``--heartbeat-interval`` is ``LBPROXY_HEARTBEAT_INTERVAL``); a flag beats the
variable. Nothing here names a setting: a new one is a field in config.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from lbproxy.config import Config, admin_exposure
from lbproxy.settings import ENV_PREFIX, Setting, build, replace_path, shown_default, walk


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class _EnvParser(argparse.ArgumentParser):
    """Adds options whose default comes from ``LBPROXY_*`` and shows it in --help."""

    def env_option(self, flag: str, *, help: str, secret: bool = False, **kwargs: Any) -> None:
        """For the tools' own flags (lbproxy_tools); ``serve``'s come from ``Config``."""
        env = _env_name(flag)
        kind = kwargs.get("type", str)
        default = kwargs.pop("default", None)
        raw = os.environ.get(env)
        if raw is not None and raw != "":
            try:
                default = kind(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                self.error(f"{env}={raw!r}: {exc}")
            choices = kwargs.get("choices")
            if choices is not None and default not in choices:
                self.error(f"{env}={raw!r}: choose from {', '.join(map(str, choices))}")
        shown = "set" if secret and default else ("unset" if secret else "default %(default)s")
        self.add_argument(flag, default=default, help=f"{help} [env {env}; {shown}]", **kwargs)


def _argtype(s: Setting) -> Any:
    """``s.convert`` as an argparse type: its ValueError becomes a usage error (exit 2)."""

    def convert(text: str) -> Any:
        try:
            return s.convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = s.flag or "value"
    return convert


def _env_value(p: argparse.ArgumentParser, s: Setting, default: Any) -> Any:
    """The value of ``s``'s variable when it is set, else ``default``; a bad one exits 2."""
    raw = os.environ.get(s.env, "")
    if not raw.strip():
        return default
    try:
        if s.repeat:
            return tuple(s.convert(item) for item in shlex.split(raw))
        return s.convert(raw)
    except ValueError as exc:
        p.error(f"{s.env}={raw!r}: {exc}")


def _add_setting(p: argparse.ArgumentParser, path: str, declared: Any, s: Setting) -> None:
    assert s.flag is not None
    default = _env_value(p, s, declared if s.given_default else None)
    raw = os.environ.get(s.env, "").strip()  # shown as given: "1:10", not a tuple
    if s.secret:
        shown = "set" if default else "unset"
    elif s.repeat:
        shown = f"several as 'A=1 B=\"two words\"'; default {raw or shown_default(s, (), ())}"
    else:
        shown = "default " + (raw or shown_default(s, default, declared))
    kwargs: dict[str, Any] = {
        "dest": path,
        "type": _argtype(s),
        "help": f"{s.help} [env {s.env}; {shown}]".replace("%", "%%"),
        "metavar": s.metavar or s.flag.lstrip("-").replace("-", "_").upper(),
    }
    if s.choices is not None:
        kwargs["choices"] = s.choices
        kwargs["metavar"] = s.metavar or "{" + ",".join(s.choices) + "}"
    if s.repeat:
        # append onto None, never onto the variable's list: a flag replaces the variable
        p.add_argument(s.flag, action="append", default=None, **kwargs)
        p.set_defaults(**{f"{path}@env": default})
    elif s.switch:
        p.add_argument(s.flag, nargs="?", const=True, default=default, **kwargs)
    else:
        p.add_argument(s.flag, default=default, **kwargs)


def _add_serve(sub: Any) -> None:
    p: _EnvParser = sub.add_parser(
        "serve",
        help="run the balancer and its replicas",
        description="Run the load balancer on HOST:PORT with a pool of replicas.",
    )
    for path, f, s in walk(Config):
        if s.flag is not None:
            _add_setting(p, path, f.default, s)
    p.set_defaults(func=_run_serve)


def config_from_args(args: argparse.Namespace) -> Config:
    """The one place flags become settings: given values, then ``auto`` ones, then checks.

    Raises ValueError (one sentence) when the settings contradict each other or a file
    they name (the admin token, the TLS certificate) cannot be read.
    """
    values: dict[str, Any] = {}
    derived: list[tuple[str, Setting]] = []
    for path, f, s in walk(Config):
        value = getattr(args, path, None) if s.flag is not None else None
        if s.repeat:
            value = tuple(value) if value is not None else getattr(args, f"{path}@env")
        if value == "" and f.default is None:
            value = None  # an empty variable or flag means unset
        if value is None and not s.given_default:
            if s.auto is not None:
                derived.append((path, s))
        elif s.expand is not None:
            section = path.rpartition(".")[0]
            for name, item in s.expand(value).items():
                values[f"{section}.{name}" if section else name] = item
        else:
            values[path] = value
    config = build(Config, values)
    for path, s in derived:
        assert s.auto is not None
        config = replace_path(config, path, s.auto(config))
    config.validate()
    if config.tls_cert:
        from lbproxy.frontend.tls import server_context

        server_context(config.tls_cert, config.tls_key)  # a bad file: one sentence, exit 2
    return config


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked or available, the standard loop otherwise."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError as exc:
            if choice == "uvloop":
                raise SystemExit("lbproxy: uvloop is not installed") from exc
    return asyncio.new_event_loop()


def _run_serve(args: argparse.Namespace) -> int:
    from lbproxy.errors import LbproxyError
    from lbproxy.server import BalancerServer

    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = config_from_args(args)
    except ValueError as exc:
        logging.getLogger("lbproxy").error("bad settings: %s", exc)
        return 2
    exposure = admin_exposure(config)
    if exposure is not None:
        logging.getLogger("lbproxy").error("refusing to start: %s", exposure)
        return 2
    loop = new_event_loop(config.loop)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(BalancerServer(config).serve())
    except LbproxyError as exc:
        logging.getLogger("lbproxy").error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:
        logging.getLogger("lbproxy").error("cannot start: %s", exc)
        return 1
    finally:
        loop.close()
        from lbproxy.ring.offload import shutdown

        shutdown()  # a build still running must not hold the exit up
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _EnvParser(prog="lbproxy", description="A consistent-hash load balancer.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_EnvParser)
    _add_serve(sub)
    for command, module in TOOL_COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("lbproxy_tools"):
                raise
            _add_missing_tool(sub, command)
            continue
        mod.add_parser(sub)
    return parser


#: Commands served by the separate ``lbproxy_tools`` package (``pip install ./tools`` from a
#: checkout): the balancer and its image ship without the load client, the analysis and
#: matplotlib. There is no ``lbproxy[tools]`` extra (pyproject.toml says why).
TOOL_COMMANDS = {"loadtest": "lbproxy_tools.loadtest", "analyze": "lbproxy_tools.analysis"}


def _add_missing_tool(sub: Any, command: str) -> None:
    """A stand-in that takes any arguments and says in one sentence what to install."""
    p = sub.add_parser(command, help="(needs lbproxy-tools)", add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs="*")

    def missing(_args: argparse.Namespace) -> int:
        print(
            f"lbproxy {command}: the tools are not installed; "
            "in a checkout of lbproxy, run pip install ./tools (or make install) to get them.",
            file=sys.stderr,
        )
        return 2

    p.set_defaults(func=missing)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.exit(args.func(args))
