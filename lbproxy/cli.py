"""The ``lbproxy`` command: a thin shell that maps flags onto ``Config`` and runs it.

Every flag of ``serve`` can also come from an ``LBPROXY_<FLAG>`` environment variable
(``--heartbeat-interval`` is ``LBPROXY_HEARTBEAT_INTERVAL``); a flag beats the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from lbproxy.argtypes import (
    boolean,
    cidr_list,
    env_pair,
    health_path,
    key_source,
    non_negative_float,
    non_negative_int,
    percent,
    port_number,
    positive_float,
    positive_int,
    replica_template,
    status_range,
)
from lbproxy.config import (
    AutoscaleConfig,
    Config,
    DockerConfig,
    HealthConfig,
    ProxyConfig,
    SwarmConfig,
    admin_exposure,
)
from lbproxy.ring import DEFAULT_FAMILY, FAMILY_NAMES

ENV_PREFIX = "LBPROXY_"


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class _EnvParser(argparse.ArgumentParser):
    """Adds options whose default comes from ``LBPROXY_*`` and shows it in --help."""

    def env_option(self, flag: str, *, help: str, secret: bool = False, **kwargs: Any) -> None:
        """``secret`` keeps the value out of --help (a token read from the environment)."""
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


def autoscale_bounds(text: str) -> tuple[int, int]:
    """``--autoscale MIN:MAX``."""
    from lbproxy.control.autoscale import parse_bounds

    try:
        return parse_bounds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_autoscale(p: _EnvParser) -> None:
    a = AutoscaleConfig()
    p.env_option(
        "--autoscale",
        type=autoscale_bounds,
        help="scale the pool between MIN and MAX replicas from its in-flight requests, "
        "e.g. 1:10; MIN 0 scales to zero when idle (off when unset)",
        metavar="MIN:MAX",
    )
    p.env_option(
        "--target-concurrency",
        type=positive_float,
        default=a.target,
        help="autoscale: desired in-flight requests per replica",
    )
    p.env_option(
        "--autoscale-tick", type=positive_float, default=a.tick, help="seconds between decisions"
    )
    p.env_option(
        "--autoscale-stable-window",
        type=positive_float,
        default=a.stable_window,
        help="seconds of in-flight samples a normal decision averages",
    )
    p.env_option(
        "--autoscale-panic-window",
        type=positive_float,
        default=a.panic_window,
        help="seconds of in-flight samples the panic check averages",
    )
    p.env_option(
        "--autoscale-panic-threshold",
        type=positive_float,
        default=a.panic_threshold,
        help="panic when the panic window asks for this many times the ready replicas",
    )
    p.env_option(
        "--autoscale-max-scale-up-rate",
        type=positive_float,
        default=a.max_scale_up_rate,
        help="at most this many times the ready replicas after one decision",
    )
    p.env_option(
        "--autoscale-max-scale-down-rate",
        type=positive_float,
        default=a.max_scale_down_rate,
        help="at least 1/this of the replicas remain after one decision",
    )
    p.env_option(
        "--autoscale-scale-down-delay",
        type=non_negative_float,
        default=a.scale_down_delay,
        help="seconds of lower recommendations before the pool shrinks (stabilisation)",
    )
    p.env_option(
        "--autoscale-hold-timeout",
        type=positive_float,
        default=a.hold_timeout,
        help="scale to zero: seconds a request waits for a replica to start (503 beyond)",
    )
    p.env_option(
        "--autoscale-hold-queue",
        type=positive_int,
        default=a.hold_queue,
        help="scale to zero: requests that may wait for a replica at once (503 beyond)",
    )


def _add_serve(sub: Any) -> None:
    p: _EnvParser = sub.add_parser(
        "serve",
        help="run the balancer and its replicas",
        description="Run the load balancer on HOST:PORT with a pool of replicas.",
    )
    d, h, x, k = Config(), HealthConfig(), ProxyConfig(), DockerConfig()
    p.env_option("--host", default=d.host, help="address to listen on (0.0.0.0 in containers)")
    p.env_option("--port", type=int, default=d.port, help="port to listen on")
    p.env_option(
        "--replicas", type=non_negative_int, default=d.replicas, help="initial pool size N"
    )
    p.env_option(
        "--backend",
        choices=("process", "docker", "swarm"),
        default=d.backend,
        help="where replicas run: local processes, Docker containers or Swarm services",
    )
    p.env_option("--hash", choices=FAMILY_NAMES, default=DEFAULT_FAMILY, help="ring hash family")
    p.env_option(
        "--slots", type=positive_int, help="ring slots / table size (family default if unset)"
    )
    p.env_option(
        "--vnodes", type=positive_int, help="virtual nodes per replica (family default if unset)"
    )
    p.env_option(
        "--probe",
        choices=("quadratic", "linear"),
        default=d.probe,
        help="collision probing of the seed families: slot+1, +4, +9, ... (quadratic, the "
        "assignment's) or slot+1, +2, +3, ... (linear)",
    )
    p.env_option(
        "--heartbeat-interval",
        type=positive_float,
        default=h.interval,
        help="seconds between heartbeat rounds",
    )
    p.env_option(
        "--heartbeat-timeout",
        type=positive_float,
        default=h.timeout,
        help="seconds a heartbeat may take",
    )
    p.env_option(
        "--fall",
        type=positive_int,
        default=h.fall,
        help="missed heartbeats in a row that mark a replica down",
    )
    p.env_option(
        "--rise",
        type=positive_int,
        default=h.rise,
        help="passed heartbeats in a row that mark a new replica up",
    )
    p.env_option(
        "--health-path",
        type=health_path,
        default=h.path,
        help="path each heartbeat asks for (/ for a service without a health endpoint)",
    )
    p.env_option(
        "--health-method",
        choices=("GET", "HEAD"),
        type=str.upper,
        default=h.method,
        help="method of each heartbeat",
    )
    p.env_option(
        "--health-status",
        type=status_range,
        default="2xx",
        help="statuses that pass a heartbeat: 2xx, 200 or 200-399",
    )
    p.env_option(
        "--connect-timeout",
        type=positive_float,
        default=x.connect_timeout,
        help="seconds to connect to a replica",
    )
    p.env_option(
        "--read-timeout",
        type=positive_float,
        default=x.read_timeout,
        help="seconds a replica may stay silent mid-response",
    )
    p.env_option(
        "--retries",
        type=non_negative_int,
        default=x.retries,
        help="other replicas to try when a connection fails",
    )
    p.env_option(
        "--max-body",
        type=positive_int,
        default=x.max_body_bytes,
        help="largest request body in bytes (413 beyond)",
    )
    p.env_option(
        "--header-timeout",
        type=positive_float,
        default=x.header_timeout,
        help="seconds a client has to send a request head (408 beyond; slowloris guard)",
    )
    p.env_option(
        "--idle-timeout",
        type=positive_float,
        default=x.idle_timeout,
        help="seconds an idle keep-alive client connection is kept",
    )
    p.env_option(
        "--bounded-load",
        type=non_negative_float,
        default=x.bounded_load,
        help="cap each replica at this factor times the mean in-flight load, e.g. 1.25 (0: off)",
    )
    p.env_option(
        "--key",
        type=key_source,
        default=x.key,
        help="where the routing key comes from: header:NAME, query:NAME, cookie:NAME, "
        "client-ip or path; when absent, the X-Request-ID or a random 6-digit id "
        "(the assignment's behaviour)",
    )
    p.env_option(
        "--max-conns-per-replica",
        type=non_negative_int,
        default=x.max_conns_per_replica,
        help="upstream connections per replica at most (HAProxy maxconn); more requests "
        "wait in the replica's FIFO queue (0: no cap)",
    )
    p.env_option(
        "--trusted-proxies",
        type=cidr_list,
        default=x.trusted_proxies,
        help="CIDR,... of proxies in front of lbproxy whose X-Forwarded-*/Forwarded fields "
        "are kept and appended to (from anyone else they are replaced)",
    )
    p.env_option(
        "--queue-timeout",
        type=positive_float,
        default=x.queue_timeout,
        help="seconds a request may wait in a replica's queue before a 503",
    )
    p.env_option(
        "--upstream-idle-timeout",
        type=positive_float,
        default=x.upstream_idle_timeout,
        help="seconds an idle pooled connection to a replica is kept (below its keep-alive)",
    )
    p.env_option(
        "--phase-timings",
        type=boolean,
        nargs="?",
        const=True,
        default=x.phase_timings,
        help="histograms of where requests wait (head, acquire, upstream, ...) in the metrics",
    )
    p.env_option(
        "--rewrite-404",
        choices=("on", "off"),
        help="turn a replica's 404 into the assignment's 400 'endpoint does not exist' body "
        "(default: on for server_app replicas, off for your own --replica-cmd or image)",
    )
    p.env_option(
        "--admin-token",
        secret=True,
        help="require 'Authorization: Bearer TOKEN' on /add, /rm and other mutating calls",
    )
    p.env_option(
        "--admin-token-file",
        help="read the admin token from this file (a Docker secret under /run/secrets/)",
    )
    p.env_option(
        "--insecure-admin",
        type=boolean,
        nargs="?",
        const=True,
        default=d.insecure_admin,
        help="allow the admin endpoints on a non-loopback listener without a token",
    )
    p.env_option(
        "--admin-host", default=d.admin_host, help="address of the separate admin listener"
    )
    p.env_option(
        "--admin-port",
        type=int,
        help="serve /rep, /add, /rm and /lbproxy/* on this port only, not the public one",
    )
    p.env_option(
        "--tls-cert",
        help="PEM certificate chain: the public listener speaks TLS 1.2+ (ALPN http/1.1)",
    )
    p.env_option("--tls-key", help="PEM private key for --tls-cert (default: in the cert file)")
    p.env_option(
        "--eject-after",
        type=non_negative_int,
        default=x.eject_after,
        help="failed requests in a row that eject a replica until its heartbeat passes (0: off)",
    )
    p.env_option(
        "--eject-base-time",
        type=non_negative_float,
        default=x.eject_base_time,
        help="seconds an ejected replica stays out, times its ejections (Envoy; 0: next heartbeat)",
    )
    p.env_option(
        "--eject-max-time",
        type=non_negative_float,
        default=x.eject_max_time,
        help="cap on one ejection's time in seconds",
    )
    p.env_option(
        "--max-eject-percent",
        type=percent,
        default=x.max_eject_percent,
        help="most of the pool ejected at once, in percent (one replica may always be)",
    )
    p.env_option(
        "--start-timeout",
        type=positive_float,
        default=d.start_timeout,
        help="seconds a new replica has to pass its heartbeats",
    )
    p.env_option(
        "--stop-timeout",
        type=positive_float,
        default=d.stop_timeout,
        help="seconds to drain and stop a replica before killing it",
    )
    p.env_option(
        "--replica-cmd",
        type=replica_template,
        help="the command each replica runs; {port}, {name}, {ring_id} are substituted and "
        "PORT, SERVER_ID, LBPROXY_RING_ID set (default: python -m server_app on the process "
        "backend, the image's own command on docker)",
    )
    _add_replica_env(p)
    p.env_option(
        "--replica-port",
        type=port_number,
        default=k.replica_port,
        help="the port a replica listens on inside its container (docker backend)",
    )
    p.env_option(
        "--resync-interval",
        type=positive_float,
        default=d.resync_interval,
        help="seconds between resyncs: list what runs, remove orphans, replace the missing",
    )
    p.env_option(
        "--shutdown-timeout",
        type=positive_float,
        default=d.shutdown_timeout,
        help="bound on a graceful shutdown (below Compose's 30 s grace); then replicas are killed",
    )
    p.env_option("--docker-image", default=k.image, help="replica image (docker backend)")
    p.env_option(
        "--docker-network",
        default=k.network,
        help="network the replica containers join (docker backend)",
    )
    p.env_option(
        "--pool", default=k.pool, help="pool name labelled on the containers (docker backend)"
    )
    p.env_option(
        "--docker-memory",
        type=positive_int,
        default=k.memory_mb,
        help="memory limit per replica container in MiB",
    )
    p.env_option(
        "--docker-cpus",
        type=positive_float,
        default=k.cpus,
        help="CPU limit per replica container",
    )
    p.env_option(
        "--docker-url", help="Docker engine URL (default: DOCKER_HOST or the local socket)"
    )
    w = SwarmConfig()
    p.env_option(
        "--swarm-network",
        default=w.network,
        help="attachable overlay network of the replica services (swarm backend)",
    )
    p.env_option(
        "--swarm-constraints",
        type=_constraint_list,
        default=w.constraints,
        help="comma-separated placement constraints, e.g. 'node.role==worker' (swarm)",
    )
    p.env_option(
        "--swarm-sync-interval",
        type=positive_float,
        default=w.sync_interval,
        help="seconds between full lists of the pool's services and tasks (swarm)",
    )
    p.env_option(
        "--swarm-stack",
        default=w.stack,
        help="stack namespace labelled on replica services, for `docker stack rm` (swarm)",
    )
    _add_autoscale(p)
    p.env_option("--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="event loop")
    p.env_option(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level",
    )
    p.set_defaults(func=_run_serve)


def _add_replica_env(p: _EnvParser) -> None:
    """Repeatable ``--replica-env``; the variable holds several, shell-quoted and spaced."""
    env = _env_name("--replica-env")
    default: list[str] = []
    raw = os.environ.get(env, "")
    if raw.strip():
        try:
            default = [env_pair(item) for item in shlex.split(raw)]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            p.error(f"{env}={raw!r}: {exc}")
    p.add_argument(
        "--replica-env",
        action="append",
        type=env_pair,
        metavar="KEY=VALUE",
        help="extra environment for every replica, repeatable "
        f"[env {env}, several as 'A=1 B=\"two words\"'; default {default or 'none'}]",
    )
    p.set_defaults(replica_env_default=default)


def _read_token_file(path: str | None) -> str | None:
    """The token in ``path`` (surrounding whitespace dropped); ValueError if unreadable."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the admin token file {path!r}: {exc}") from exc
    if not token:
        raise ValueError(f"the admin token file {path!r} is empty")
    return token


def _constraint_list(text: str) -> tuple[str, ...]:
    """'node.role==worker, node.labels.zone==a' -> a tuple of constraints ('' -> none)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def config_from_args(args: argparse.Namespace) -> Config:
    """The one place flags become settings."""
    config = _config_from_args(args)
    if config.tls_key and not config.tls_cert:
        raise ValueError("--tls-key needs --tls-cert")
    if config.tls_cert:
        from lbproxy.frontend.tls import server_context

        server_context(config.tls_cert, config.tls_key)  # a bad file: one sentence, exit 2
    rewrite = args.rewrite_404
    on = config.runs_server_app() if rewrite is None else rewrite == "on"
    return config.replace(proxy=dataclasses.replace(config.proxy, rewrite_404=on))


def _config_from_args(args: argparse.Namespace) -> Config:
    return Config(
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        backend=args.backend,
        hash=args.hash,
        slots=args.slots,
        vnodes=args.vnodes,
        probe=args.probe,
        start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout,
        replica_cmd=args.replica_cmd or None,
        replica_env=tuple(
            args.replica_env if args.replica_env is not None else args.replica_env_default
        ),
        resync_interval=args.resync_interval,
        shutdown_timeout=args.shutdown_timeout,
        health=HealthConfig(
            interval=args.heartbeat_interval,
            timeout=args.heartbeat_timeout,
            fall=args.fall,
            rise=args.rise,
            path=args.health_path,
            method=args.health_method,
            status=args.health_status,
        ),
        proxy=ProxyConfig(
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            retries=args.retries,
            max_body_bytes=args.max_body,
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
            eject_after=args.eject_after,
            eject_base_time=args.eject_base_time,
            eject_max_time=args.eject_max_time,
            max_eject_percent=args.max_eject_percent,
            bounded_load=args.bounded_load,
            key=args.key,
            phase_timings=args.phase_timings,
            max_conns_per_replica=args.max_conns_per_replica,
            queue_timeout=args.queue_timeout,
            trusted_proxies=args.trusted_proxies,
            upstream_idle_timeout=args.upstream_idle_timeout,
        ),
        admin_token=args.admin_token or _read_token_file(args.admin_token_file),
        insecure_admin=args.insecure_admin,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        docker=DockerConfig(
            image=args.docker_image,
            network=args.docker_network,
            pool=args.pool,
            replica_port=args.replica_port,
            memory_mb=args.docker_memory,
            cpus=args.docker_cpus,
            docker_url=args.docker_url,
        ),
        swarm=SwarmConfig(
            network=args.swarm_network,
            constraints=tuple(args.swarm_constraints),
            sync_interval=args.swarm_sync_interval,
            stack=args.swarm_stack,
        ),
        autoscale=_autoscale_config(args),
    )


def _autoscale_config(args: argparse.Namespace) -> AutoscaleConfig:
    """ValueError (a sentence) when the windows or bounds contradict each other."""
    bounds: tuple[int, int] | None = args.autoscale
    d = AutoscaleConfig()
    low, high = bounds if bounds is not None else (d.min_replicas, d.max_replicas)
    return AutoscaleConfig(
        enabled=bounds is not None,
        min_replicas=low,
        max_replicas=high,
        target=args.target_concurrency,
        tick=args.autoscale_tick,
        sample_interval=min(d.sample_interval, args.autoscale_tick),
        stable_window=args.autoscale_stable_window,
        panic_window=args.autoscale_panic_window,
        panic_threshold=args.autoscale_panic_threshold,
        max_scale_up_rate=args.autoscale_max_scale_up_rate,
        max_scale_down_rate=args.autoscale_max_scale_down_rate,
        scale_down_delay=args.autoscale_scale_down_delay,
        hold_timeout=args.autoscale_hold_timeout,
        hold_queue=args.autoscale_hold_queue,
    )


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
        level=args.log_level.upper(),
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
    loop = new_event_loop(args.loop)
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


#: Commands served by the separate ``lbproxy_tools`` package (``pip install 'lbproxy[tools]'``):
#: the balancer and its image ship without the load client, the analysis and matplotlib.
TOOL_COMMANDS = {"loadtest": "lbproxy_tools.loadtest", "analyze": "lbproxy_tools.analysis"}


def _add_missing_tool(sub: Any, command: str) -> None:
    """A stand-in that takes any arguments and says in one sentence what to install."""
    p = sub.add_parser(command, help="(needs lbproxy[tools])", add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs="*")

    def missing(_args: argparse.Namespace) -> int:
        print(
            f"lbproxy {command}: the tools are not installed; "
            "run pip install 'lbproxy[tools]' (in a checkout: pip install ./tools) to get them.",
            file=sys.stderr,
        )
        return 2

    p.set_defaults(func=missing)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.exit(args.func(args))
