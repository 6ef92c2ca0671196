"""The conformance cases through lbproxy and through HAProxy, in one run, side by side.

The project's rule: where a behaviour is in doubt, HAProxy is the reference (same inputs,
same run). Every case in tests/test_conformance.py is one async function that takes a
``Target`` (tests/conformance_kit.py): the same scripted upstream, the same client bytes,
sent either to lbproxy in-process or to HAProxy 2.6 started for the case on a free
127.0.0.1 port (one backend, the scripted upstream; ``http-reuse always``; timeouts
mirroring lbproxy's) and stopped by its PID. This script runs pytest on that file with
both targets and prints one row per case:

    case | lbproxy | HAProxy | same? | where they differ

"pass" means the proxy met the case's expectation (lbproxy's, which names its RFC
section); where HAProxy does not, the row gives the first unmet expectation, what each
client read (``200[a] length`` = status, the answer's tag, how the body ended; ``| next:``
starts the next client's part) and, for the known differences, which RFC section each side
follows (WHY below; docs/conformance.md has the discussion).

Run from the repository root (HAProxy installed: bench/install-tools.sh)::

    flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/conformance_vs_haproxy.py \\
        [--markdown docs-table.md] [--json out.json] [-k EXPR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES_FILE = "tests/test_conformance.py"
TARGETS = ("lbproxy", "haproxy")

#: Known differences: the case (test function) -> which RFC section (or rule) each side
#: follows. Rows without an entry show only the observed difference.
WHY: dict[str, str] = {
    "test_connection_naming_content_length_is_400_and_nothing_smuggled": (
        "HAProxy removes no field that Connection names (RFC 9110 7.6.1 says MUST), so the "
        "body stays framed and nothing is smuggled; lbproxy answers 400 (7.6.1: a sender "
        "MUST NOT name a field meant for every recipient)"
    ),
    "test_connection_naming_transfer_encoding_is_400": (
        "as above: HAProxy ignores the token and forwards; lbproxy 400"
    ),
    "test_connection_naming_host_is_400_never_hostless": (
        "as above: HAProxy keeps Host and forwards; lbproxy 400"
    ),
    "test_unasked_100_continue_is_dropped": (
        "RFC 9110 15.2: a proxy MUST forward a 1xx it did not ask for; HAProxy forwards the "
        "100, lbproxy drops it (issue 9's rule: it answers Expect itself and strips it)"
    ),
    "test_1xx_is_not_sent_to_an_http10_client": (
        "HAProxy sends the 103 to an HTTP/1.0 client; RFC 9110 15.2: MUST NOT (lbproxy drops it)"
    ),
    "test_head_on_a_missing_path_is_answered_at_once": (
        "SPEC, not HTTP: lbproxy turns the replicas' 404 into its 400 (--rewrite-404)"
    ),
    "test_h2c_offer_is_ignored": (
        "both ignore the offer (RFC 9110 7.8); HAProxy forwards Upgrade: h2c and "
        "HTTP2-Settings, lbproxy removes them (named in Connection: RFC 9110 7.6.1)"
    ),
    "test_reset_of_close_delimited_answer_is_not_relayed_as_complete": (
        "HAProxy ends the client's body with a clean close after the replica's reset, so a "
        "truncated body looks complete; lbproxy resets the client (RFC 9112 8: incomplete)"
    ),
    "test_http10_client_gets_a_close_delimited_body": (
        "HAProxy sends chunked to an HTTP/1.0 client; RFC 9112 6.1: MUST NOT send "
        "Transfer-Encoding unless the request is HTTP/1.1 (lbproxy: close-delimited)"
    ),
    "test_slow_upload_is_not_a_read_timeout": (
        "no RFC rule: HAProxy's timeout server runs during the client's upload (504); "
        "lbproxy times the replica's silence from the end of the request"
    ),
    "test_host_must_be_exactly_one_on_http11": (
        "HAProxy forwards an HTTP/1.1 request without Host; RFC 9112 3.2: MUST 400 (lbproxy)"
    ),
    "test_long_url_is_414": (
        "HAProxy: 400 once the head exceeds its buffer (tune.bufsize); lbproxy 414 "
        "(RFC 9110 15.5.15)"
    ),
    "test_chunked_body_over_the_limit_is_413": (
        "lbproxy's --max-body (413); HAProxy has no streamed-body limit: it forwards and "
        "the replica waits for the rest (504)"
    ),
    "test_gzip_chunked_keeps_the_gzip_coding": (
        "HAProxy 2.6 refuses any request coding but chunked (422); lbproxy forwards "
        "gzip, chunked (RFC 9112 6.1 lets a proxy forward codings it does not decode)"
    ),
    "test_extension_method_is_forwarded_or_501": (
        "RFC 9110 9.1 allows both: HAProxy forwards any token method (the replica "
        "fails: 502), lbproxy answers 501 to one its parser does not know"
    ),
    "test_reason_phrases_are_the_standard_ones": "as above (BREW)",
    "test_long_request_id_is_refused": (
        "lbproxy's own rule (X-Request-ID is its ring key and is reflected)"
    ),
    "test_every_connection_field_is_honoured": (
        "HAProxy forwards fields that Connection names; RFC 9110 7.6.1: MUST remove them "
        "(lbproxy does)"
    ),
}

#: Smuggling shapes, by parameter: both sides conform unless said otherwise.
WHY_SHAPE: dict[str, str] = {
    "cl-and-te": (
        "RFC 9112 6.1 allows both: HAProxy drops Content-Length, forwards chunked and "
        "closes after; lbproxy 400 and closes"
    ),
    "obs-fold": ("RFC 9112 5.2 allows both: HAProxy replaces the fold with SP, lbproxy 400"),
    "bare-lf-chunk": (
        "RFC 9112 2.2 MAY: HAProxy reads a bare LF as a line end (and re-chunks with "
        "CRLF), lbproxy (llhttp strict) 400"
    ),
    "nul-in-header": (
        "HAProxy forwards a NUL in a field value as is (the replica refused it: 502); "
        "RFC 9110 5.5: MUST reject or replace with SP (lbproxy 400)"
    ),
}


@dataclass
class Outcome:
    """One case on one proxy."""

    result: str = "not run"  # pass / fail / skip
    message: str = ""
    trace: list[str] = field(default_factory=list)


@dataclass
class Row:
    case: str
    function: str
    by_target: dict[str, Outcome] = field(default_factory=dict)

    @property
    def same(self) -> str:
        results = {self.by_target.get(t, Outcome()).result for t in TARGETS}
        if "skip" in results:
            return "n/a"
        return "yes" if results == {"pass"} else "no"


_PARAM = re.compile(r"^(?P<fn>[^\[]+)\[(?P<params>.*)\]$")


def split_nodeid(nodeid: str) -> tuple[str, str, str]:
    """``tests/x.py::test_a[haproxy-304-chunked]`` -> (``test_a[304-chunked]``, ``test_a``,
    ``haproxy``): the target is the fixture's parameter, listed first."""
    name = nodeid.split("::", 1)[1]
    m = _PARAM.match(name)
    if m is None:
        return name, name, "?"
    fn, params = m.group("fn"), m.group("params")
    for t in TARGETS:
        if params == t:
            return fn, fn, t
        if params.startswith(t + "-"):
            return f"{fn}[{params[len(t) + 1 :]}]", fn, t
    return name, fn, "?"


class Collector:
    """A pytest plugin that keeps each case's outcome and client trace per target."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case, fn, target = split_nodeid(report.nodeid)
        row = self.rows.setdefault(case, Row(case, fn))
        out = row.by_target.setdefault(target, Outcome())
        props = dict(report.user_properties)
        trace = props.get("trace")
        if isinstance(trace, list):
            out.trace = [str(x) for x in trace]
        if report.skipped:
            out.result = "skip"
            longrepr = report.longrepr
            out.message = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
            out.message = out.message.removeprefix("Skipped: ")
        elif report.failed:
            out.result = "fail"
            crash = getattr(report.longrepr, "reprcrash", None)
            text = crash.message if crash is not None else str(report.longrepr)
            out.message = text.splitlines()[0] if text else "failed"
        elif report.when == "call" and out.result == "not run":
            out.result = "pass"


def cell(out: Outcome | None) -> str:
    if out is None:
        return "not run"
    if out.result == "pass":
        return "pass"
    if out.result == "skip":
        return "n/a"
    return "**differs**"


def reason(row: Row) -> str:
    if row.same == "yes":
        return ""
    parts = []
    for t in TARGETS:
        out = row.by_target.get(t)
        if out is None:
            continue
        if out.result == "skip":
            parts.append(f"{t}: {out.message}")
            continue
        if out.result == "fail":
            parts.append(f"{t} unmet: `{_clip(out.message, 90)}`")
        if out.trace:
            parts.append(f"{t} read: `{_clip(' '.join(out.trace), 110)}`")
    why = WHY.get(row.function) or WHY_SHAPE.get(row.case.partition("[")[2].rstrip("]"))
    if why and row.same == "no":
        parts.append(why)
    return "; ".join(parts).replace("|", "\\|")


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def table(rows: list[Row]) -> str:
    lines = [
        "| case | lbproxy | HAProxy | same? | where they differ |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row.case}` | {cell(row.by_target.get('lbproxy'))} | "
            f"{cell(row.by_target.get('haproxy'))} | {row.same} | {reason(row)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--json", type=Path, help="also write every outcome and trace as JSON")
    parser.add_argument("-k", dest="keyword", help="only the cases pytest -k selects")
    args = parser.parse_args()

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    os.environ["LBPROXY_CONFORMANCE_TARGETS"] = ",".join(TARGETS)
    collector = Collector()
    pytest_args = [CASES_FILE, "-q", "-p", "no:cacheprovider", "--tb=no", "-rN"]
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    code = pytest.main(pytest_args, plugins=[collector])
    rows = list(collector.rows.values())
    if not rows:
        print(f"no cases ran (pytest exit {code})", file=sys.stderr)
        return 2
    text = table(rows)
    counted = [r for r in rows if r.same != "n/a"]
    same = sum(1 for r in counted if r.same == "yes")
    lb_fail = [r.case for r in rows if r.by_target.get("lbproxy", Outcome()).result == "fail"]
    summary = (
        f"{len(rows)} cases: {same} same, {len(counted) - same} different, "
        f"{len(rows) - len(counted)} lbproxy-only; lbproxy failed {len(lb_fail)}"
    )
    print()
    print(text)
    print()
    print(summary)
    if args.markdown:
        args.markdown.write_text(text + "\n\n" + summary + "\n")
    if args.json:
        data: dict[str, Any] = {
            "summary": summary,
            "cases": [
                {
                    "case": r.case,
                    "same": r.same,
                    **{t: vars(o) for t, o in r.by_target.items()},
                }
                for r in rows
            ],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 1 if lb_fail else 0


if __name__ == "__main__":
    sys.exit(main())
