"""What a replica runs (``--replica-cmd``) and with which environment, for both backends.

Pure functions, no I/O: the process backend turns the template into a shell script run by
``/bin/sh``, the Docker backend into the container's ``Cmd`` (split like a shell would,
without running one, so images without a shell work too).

The template may use ``{port}``, ``{name}`` and ``{ring_id}``; nothing else in it is
touched, so shell syntax such as ``${HOME}`` or ``{a,b}`` passes through. ``{name}`` is
substituted shell-quoted (process names may contain spaces: ``Server 1``), so write
``--name {name}``, not ``--name '{name}'``. The environment always carries ``PORT``,
``SERVER_ID`` and ``LBPROXY_RING_ID``, plus every ``--replica-env KEY=VALUE``.

Why a wrapper script on the process backend: the balancer asks Linux to signal its child
when the balancer dies (``PR_SET_PDEATHSIG``), but only the direct child gets that
signal. A command such as ``sh -c 'python3 -m http.server'`` or a server that forks
workers would leave grandchildren behind. So each replica is a process group of its own
(``start_new_session``) led by a tiny ``sh`` that runs the command in the background and,
on SIGTERM/SIGINT/SIGHUP (the parent-death signal among them), signals the whole group and
waits for it. The backend itself always signals the group, never just one pid, and kills
what is left of a group whose leader has exited (a replica killed with -9).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

__all__ = [
    "PLACEHOLDERS",
    "container_command",
    "parse_env_pair",
    "replica_env",
    "substitute",
    "validate_template",
    "wrapper_script",
]

PLACEHOLDERS = ("{port}", "{name}", "{ring_id}")
_PLACEHOLDER = re.compile(r"\{(port|name|ring_id)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Variables the backend sets itself; --replica-env cannot change them.
RESERVED_ENV = frozenset({"PORT", "SERVER_ID", "LBPROXY_RING_ID", "LBPROXY_PARENT_PID"})


def substitute(template: str, *, port: int, name: str, ring_id: int) -> str:
    """The template with ``{port}``, ``{name}`` (shell-quoted) and ``{ring_id}`` filled in."""
    values = {"port": str(port), "name": shlex.quote(name), "ring_id": str(ring_id)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def validate_template(template: str) -> str:
    """The template if it can run (non-empty, balanced quotes), else ``ValueError``."""
    if not template.strip():
        raise ValueError("the replica command is empty")
    try:
        words = shlex.split(substitute(template, port=5000, name="S1", ring_id=1))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid command line ({exc})") from exc
    if not words:
        raise ValueError(f"{template!r} is not a command")
    return template


def container_command(template: str | None, *, port: int, name: str, ring_id: int) -> list[str]:
    """The container's ``Cmd``: the template split like a shell would, without a shell (an
    image need not have one); ``[]`` keeps the image's own command. Use
    ``sh -c '...'`` in the template when you want shell expansion."""
    if template is None:
        return []
    return shlex.split(substitute(template, port=port, name=name, ring_id=ring_id))


def wrapper_script(command: str, *, grace: float = 5.0) -> str:
    """The ``sh -c`` script that runs ``command`` and takes its process group down with it.

    The trap ignores further signals first, so the group-wide ``kill`` does not re-enter
    it; then it waits for the command to finish its own graceful shutdown, for at most
    ``grace`` seconds: a command that ignores SIGTERM (or whose workers outlive it) is then
    killed with the whole group, as systemd escalates to SIGKILL after ``TimeoutStopSec``.
    This matters when the balancer was killed -9: nobody else is left to escalate. Once the
    command has exited, what is left of the group (the wrapper included) is killed.
    """
    seconds = f"{max(grace, 0.0):g}"
    return (
        "trap \"trap '' TERM INT HUP; kill -TERM 0 2>/dev/null; "
        f"(sleep {seconds}; kill -KILL 0 2>/dev/null) & "
        'wait \\$c; kill -KILL 0" TERM INT HUP\n'
        f"{{\n{command}\n}} &\n"
        "c=$!\n"
        "wait $c\n"
    )


def parse_env_pair(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as a pair; ``ValueError`` in one sentence otherwise."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    if not _ENV_NAME.match(key):
        raise ValueError(f"{key!r} is not a valid environment variable name")
    if key in RESERVED_ENV:
        raise ValueError(f"{key} is set by lbproxy for each replica and cannot be overridden")
    return key, value


def replica_env(
    *, port: int, name: str, ring_id: int, extra: Sequence[str] | Mapping[str, str] = ()
) -> dict[str, str]:
    """The variables every replica gets, whatever it runs."""
    env: dict[str, str] = {}
    pairs = extra.items() if isinstance(extra, Mapping) else map(parse_env_pair, extra)
    for key, value in pairs:
        env[key] = value
    env.update(SERVER_ID=name, PORT=str(port), LBPROXY_RING_ID=str(ring_id))
    return env
