"""Fuzz the balancer's own API with schemathesis, driven by its OpenAPI document.

The balancer runs with in-process replicas (tests/conftest.py's ``InProcessBackend``) on an
event loop in a background thread, so adding 64 replicas in one call costs milliseconds;
the fuzzer calls it over real HTTP on 127.0.0.1 from the test thread.

Every operation gets positive examples (valid per the document) and, where it takes input,
negative ones (invalid bodies and queries). Each response must:

- not be a 5xx (the in-process backend never refuses, so not even the documented 502/503),
- have a documented status, content type and a body matching the document's schema,
- be SPEC's failure body when it is an error, and a 4xx when the input was invalid.

And the pool must never be corrupted: a model of the pool is kept from the accepted calls
(a 200 from /add or /rm returns the whole replica list; it must be the old list plus
exactly ``n`` new names, the requested ones first, or minus exactly ``n``, the requested
ones among them), ``GET /rep`` must equal the model after every call, and at the end the
replicas running, the replicas on the ring and /rep must all be the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from lbproxy.config import HealthConfig
from lbproxy.control.admin import ADD_TOO_MANY, MAX_ADMIN_BODY, RM_TOO_MANY
from lbproxy.server import BalancerServer
from lbproxy.views import openapi
from tests.conftest import InProcessBackend, fast_config

pytestmark = [pytest.mark.inprocess, pytest.mark.slow]

#: Examples per operation and generation mode (positive, negative).
EXAMPLES = 80
#: Steps of the interleaved phase (all operations mixed, plus changes naming members).
INTERLEAVED = 200
#: Above this many replicas the pool is trimmed back to BASE_POOL between examples.
POOL_CAP = 40
BASE_POOL = 3

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class ThreadedBalancer:
    """The whole balancer (public front-end + control app) with in-process replicas, on its
    own event loop thread: the fuzzer's requests take the path users' requests take."""

    def __init__(self, **changes: object) -> None:
        # Heartbeats relaxed: the fuzzer shares the GIL with the loop, and a replica
        # replaced under a slow heartbeat would only add noise to the ring checks.
        # The seed family (SPEC's reference ring) builds in microseconds and fills up at
        # about 56 replicas, so the fuzzer also reaches /add's "ring full" 409. The default
        # maglev family takes ~80 ms per build, and /rm rebuilds once per removed replica
        # (reported): with it, the trims alone would take minutes.
        self.config = fast_config(
            replicas=BASE_POOL,
            hash="seed",
            health=HealthConfig(interval=0.5, timeout=2.0, fall=3, rise=1),
        ).replace(**changes)
        self.backend = InProcessBackend()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lb", daemon=True)
        self._server: BalancerServer | None = None
        self.url = ""

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self._server = BalancerServer(self.config, self.backend)
        await self._server.start()
        self.url = self._server.url

    @staticmethod
    async def _cancel_leftover_tasks() -> None:
        """Tasks still pending after stop (a kept-alive control connection's handler)."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _running_names(self) -> list[str]:
        return sorted(h.name for h in await self.backend.list())

    def running_names(self) -> list[str]:
        result: list[str] = self.call(self._running_names())
        return result

    def __enter__(self) -> ThreadedBalancer:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._server is not None:
                self.call(self._server.stop())
            self.call(self._cancel_leftover_tasks())
            self.call(self.loop.shutdown_asyncgens())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()


@pytest.fixture(scope="module")
def balancer() -> Iterator[ThreadedBalancer]:
    with ThreadedBalancer() as lb:
        yield lb
    assert lb.backend.running == {}, "the balancer left replicas running"


def spec_failure_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error the balancer answers itself is SPEC's failure body."""
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), f"error body is not an object: {body!r}"
        assert set(body) == {"message", "status"}, f"error body keys: {sorted(body)}"
        assert body["status"] == "failure", body
        assert isinstance(body["message"], str) and body["message"].startswith("<Error> "), body
    return None


class PoolModel:
    """The pool as the accepted calls imply it, checked against every /add and /rm answer."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.accepted: Counter[str] = Counter()

    @staticmethod
    def _change(body: object, add: bool = False) -> tuple[int, list[str]] | None:
        """(n, hostnames) when ``body`` is a valid change request, else None.

        /add also takes an optional ``weight`` (an integer from 1 to 100; issue 11).
        """
        allowed = {"n", "hostnames", "weight"} if add else {"n", "hostnames"}
        if not isinstance(body, dict) or set(body) - allowed:
            return None
        weight = body.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
            return None
        n = body.get("n")
        hostnames = body.get("hostnames")
        if hostnames is None:
            hostnames = []
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 64:
            return None
        if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
            return None
        return n, hostnames

    def observe(self, label: str, body: object, status: int, answer: Any) -> None:
        if label not in ("POST /add", "DELETE /rm"):
            return
        change = self._change(body, label == "POST /add")
        if status == 400 and change is not None and len(change[1]) > change[0]:
            expected = ADD_TOO_MANY if label == "POST /add" else RM_TOO_MANY
            assert answer == {"message": expected, "status": "failure"}, answer
        if status != 200:
            return
        old, new = self.names, answer["message"]["replicas"]
        assert answer["message"]["N"] == len(new)
        assert change is not None, f"{label} accepted a body the document rejects: {body!r}"
        n, hostnames = change
        if label == "POST /add":
            added = new[len(old) :]
            assert new[: len(old)] == old, "an /add changed the existing members"
            assert len(added) == n, f"/add n={n} added {len(added)}: {added}"
            assert added[: len(hostnames)] == hostnames, (hostnames, added)
            assert not set(added) & set(old)
        else:
            removed = [x for x in old if x not in set(new)]
            assert new == [x for x in old if x in set(new)], "an /rm reordered or invented names"
            assert len(removed) == n, f"/rm n={n} removed {len(removed)}: {removed}"
            assert set(hostnames) <= set(removed), (hostnames, removed)
        self.accepted[label] += 1
        self.names = list(new)


class Fuzz:
    """Runs cases against the balancer, keeping the model, tallies and the pool bounded."""

    def __init__(self, lb: ThreadedBalancer, session: requests.Session) -> None:
        self.lb = lb
        self.session = session
        self.model = PoolModel(self.rep()["message"]["replicas"])
        self.examples: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.trims = 0

    def rep(self) -> Any:
        resp = self.session.get(self.lb.url + "/rep", timeout=10)
        assert resp.status_code == 200
        return resp.json()

    def run(self, case: Any, mode: str, checks: list[Any] = CHECKS) -> requests.Response:
        label = case.operation.label
        response = case.call(base_url=self.lb.url, session=self.session, timeout=30)
        self.examples[f"{label} {mode}"] += 1
        self.statuses[(label, response.status_code)] += 1
        try:
            answer = response.json()
        except ValueError:
            answer = None
        self.model.observe(label, case.body, response.status_code, answer)
        case.validate_response(response, checks=checks, additional_checks=[spec_failure_shape])
        assert rep_names(self.rep()) == self.model.names, "/rep left the model"
        self.trim()
        return response

    def trim(self) -> None:
        """Keep the pool small: /rm back down to BASE_POOL once it grew past POOL_CAP."""
        if len(self.model.names) <= POOL_CAP:
            return
        for _ in range(POOL_CAP):  # bounded: each call removes up to 64
            excess = len(self.model.names) - BASE_POOL
            if excess <= 0:
                break
            body = {"n": min(excess, 64), "hostnames": []}
            resp = self.session.delete(self.lb.url + "/rm", json=body, timeout=30)
            assert resp.status_code == 200, resp.text
            self.model.observe("DELETE /rm", body, 200, resp.json())
            self.trims += 1
        assert rep_names(self.rep()) == self.model.names


def rep_names(body: Any) -> list[str]:
    names: list[str] = body["message"]["replicas"]
    return names


def fuzz_operation(fuzz: Fuzz, operation: Any, mode: GenerationMode) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # No shrinking: the target is stateful, and a failure prints its reproduction.
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        fuzz.run(case, mode.value)

    run()


def fuzz_interleaved(fuzz: Fuzz, schema: Any, operations: list[Any]) -> None:
    """Every operation and mode mixed in one sequence, plus changes that name members.

    Random hostnames almost never name a member, so a third of the steps are an /rm or an
    /add built from the model's current names (an /rm of members, an /add that collides).
    """
    add, rm = schema["/add"]["POST"], schema["/rm"]["DELETE"]
    generated = st.one_of(
        *(
            op.as_strategy(generation_mode=mode).map(lambda c, m=mode: (c, m.value))
            for op in operations
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
            if mode is GenerationMode.POSITIVE or _takes_input(op)
        )
    )

    @settings(
        max_examples=INTERLEAVED,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        # Draw the same things whatever the pool holds: Hypothesis replays draws, and
        # draws that depend on server state would be "flaky" to it.
        members = data.draw(st.integers(0, 3)) == 0  # a quarter of the steps
        picks = data.draw(st.lists(st.integers(0, 1 << 16), max_size=4))
        extra = data.draw(st.integers(0, 3))
        use_add = data.draw(st.integers(0, 2)) == 0
        case, mode = data.draw(generated)
        names = fuzz.model.names
        if members and names:
            named = list(dict.fromkeys(names[p % len(names)] for p in picks))
            body = {"n": len(named) + extra, "hostnames": named}
            fuzz.run((add if use_add else rm).Case(body=body), "members")
        else:
            fuzz.run(case, mode)

    run()


def _takes_input(operation: Any) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def test_served_document_is_the_module_document(balancer: ThreadedBalancer) -> None:
    resp = requests.get(balancer.url + openapi.OPENAPI_PATH, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == openapi.OPENAPI


def test_fuzz_admin_api_against_its_document(balancer: ThreadedBalancer) -> None:
    schema = schemathesis.openapi.from_dict(openapi.OPENAPI)
    operations = [result.ok() for result in schema.get_all_operations()]
    served = {op.label for op in operations if "200" in op.definition.raw["responses"]}
    assert served == {
        "GET /rep",
        "POST /add",
        "DELETE /rm",
        "GET /lbproxy/status",
        "GET /lbproxy/events",
        "PUT /lbproxy/weight",
        "GET /lbproxy/metrics",
        "GET /lbproxy/openapi.json",
        "GET /lbproxy/dashboard",
        "GET /lbproxy/dashboard/stream",
    }
    # (and GET /lbproxy/dashboard/, a documented 308.) Every other method of those paths is
    # documented as its 405 and fuzzed as such.
    assert len(operations) == 5 * 11
    # An event stream never ends: its GET is tried once below, not fuzzed.
    endless = [op for op in operations if _endless(op)]
    assert [op.label for op in endless] == ["GET /lbproxy/dashboard/stream"]
    operations = [op for op in operations if op not in endless]
    with requests.Session() as session:
        fuzz = Fuzz(balancer, session)
        assert fuzz.model.names == ["Server 1", "Server 2", "Server 3"]
        _stream_as_documented(fuzz)
        for operation in operations:
            fuzz_operation(fuzz, operation, GenerationMode.POSITIVE)
            if _takes_input(operation):
                fuzz_operation(fuzz, operation, GenerationMode.NEGATIVE)
        fuzz_interleaved(fuzz, schema, operations)
        _explicit_cases(fuzz, schema)
        _assert_pool_matches_model(fuzz)
        print(_report(fuzz))


def _endless(operation: Any) -> bool:
    ok = operation.definition.raw["responses"].get("200", {})
    return "text/event-stream" in ok.get("content", {})


def _stream_as_documented(fuzz: Fuzz) -> None:
    """The dashboard's stream answers 200 with the documented type and its first event."""
    path = "/lbproxy/dashboard/stream"
    documented = openapi.OPENAPI["paths"][path]["get"]["responses"]["200"]["content"]
    with fuzz.session.get(fuzz.lb.url + path, stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].split(";")[0] in documented
        assert next(resp.iter_lines()).startswith(b"retry: ")


def _explicit_cases(fuzz: Fuzz, schema: Any) -> None:
    """The error paths random data rarely reaches, with SPEC's exact messages."""
    add, rm = schema["/add"]["POST"], schema["/rm"]["DELETE"]
    events = schema["/lbproxy/events"]["GET"]

    def expect(case: Any, status: int, message: str | None = None) -> None:
        resp = fuzz.run(case, "explicit")
        assert resp.status_code == status, resp.text
        if message is not None:
            assert resp.json() == {"message": message, "status": "failure"}

    expect(add.Case(body={"n": 1, "hostnames": ["fz-a", "fz-b"]}), 400, ADD_TOO_MANY)
    expect(rm.Case(body={"n": 1, "hostnames": ["fz-a", "fz-b"]}), 400, RM_TOO_MANY)
    expect(add.Case(body={"n": 1, "hostnames": ["fz-dup"]}), 200)
    expect(add.Case(body={"n": 1, "hostnames": ["fz-dup"]}), 409)
    expect(add.Case(body={"n": 2, "hostnames": ["fz-x", "fz-x"]}), 400)
    expect(rm.Case(body={"n": 1, "hostnames": ["fz-missing"]}), 404)
    expect(rm.Case(body={"n": 1, "hostnames": ["fz-dup"]}), 200)
    expect(rm.Case(body={"n": len(fuzz.model.names) + 1}), 400)
    expect(add.Case(body={"n": 1, "hostnames": ["x" * (MAX_ADMIN_BODY + 1)]}), 413)
    expect(add.Case(body={"n": 1, "hostnames": ["bad/name"]}), 400)
    expect(events.Case(query={"since": 0}), 200)
    # The backend refuses one of the names: a documented 502, and nothing of the /add stays
    # (the model is unchanged, and the running replicas are checked against it below).
    fuzz.lb.backend.fail_names.add("fz-refused")
    resp = fuzz.run(
        add.Case(body={"n": 5, "hostnames": ["fz-ok", "fz-refused"]}),
        "explicit",
        checks=[c for c in CHECKS if c is not not_a_server_error],
    )
    assert resp.status_code == 502, resp.text
    assert fuzz.lb.running_names() == sorted(fuzz.model.names)


def _assert_pool_matches_model(fuzz: Fuzz) -> None:
    """/rep, the running replicas and the ring all hold exactly the model's names."""
    names = fuzz.model.names
    rep = fuzz.rep()["message"]
    assert rep == {"N": len(names), "replicas": names}
    assert fuzz.lb.running_names() == sorted(names), "running replicas differ from the model"
    status = fuzz.session.get(fuzz.lb.url + "/lbproxy/status", timeout=10).json()["message"]
    assert sorted(status["ring"]) == sorted(names), "a member of /rep is not on the ring"
    assert sorted(r["name"] for r in status["replicas"]) == sorted(names)
    assert all(r["state"] == "up" for r in status["replicas"]), status["replicas"]


def _report(fuzz: Fuzz) -> str:
    lines = [f"fuzz: {sum(fuzz.examples.values())} examples, {fuzz.trims} pool trims"]
    lines += [f"  {key:<42} {count:>5}" for key, count in sorted(fuzz.examples.items())]
    lines.append("responses by status:")
    lines += [
        f"  {label:<28} {status} {count:>5}"
        for (label, status), count in sorted(fuzz.statuses.items())
    ]
    lines.append(f"accepted changes: {dict(fuzz.model.accepted)}; final pool {fuzz.model.names}")
    return "\n".join(lines)


def test_admin_token_answers_the_documented_401() -> None:
    """With --admin-token, /add and /rm without the bearer token are a documented 401."""
    schema = schemathesis.openapi.from_dict(openapi.OPENAPI)
    add, rm = schema["/add"]["POST"], schema["/rm"]["DELETE"]
    checks = [c for c in CHECKS if c is not negative_data_rejection]
    with ThreadedBalancer(admin_token="fuzz-token") as lb, requests.Session() as session:
        for case in (add.Case(body={"n": 1}), rm.Case(body={"n": 1})):
            resp = case.call(base_url=lb.url, session=session, timeout=30)
            assert resp.status_code == 401, resp.text
            assert resp.headers["www-authenticate"][0].startswith("Bearer")
            case.validate_response(resp, checks=checks, additional_checks=[spec_failure_shape])
        auth = {"Authorization": "Bearer fuzz-token"}
        for case in (add.Case(body={"n": 1}), rm.Case(body={"n": 1})):
            resp = case.call(base_url=lb.url, session=session, headers=auth, timeout=30)
            assert resp.status_code == 200, resp.text
            case.validate_response(resp, checks=checks)
        assert lb.running_names() == ["Server 1", "Server 2", "Server 3"]


def test_deeply_nested_body_is_a_400_failure(balancer: ThreadedBalancer) -> None:
    """A small body (60 KB, under the 64 KiB cap) nested 60,000 deep is malformed input."""
    resp = requests.post(balancer.url + "/add", data=b"[" * 60_000, timeout=30)
    assert resp.status_code == 400, resp.text[:200]
    assert resp.json()["status"] == "failure"
