"""A balancer exposed on a non-loopback address without protection does not start.

The process-level half of test_admin_exposure.py: the real `lbproxy serve` command.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process


def test_serve_refuses_to_start_exposed() -> None:
    """The refusal comes before anything binds or starts: exit 2 with the reason."""
    proc = subprocess.run(
        [sys.executable, "-m", "lbproxy", "serve", "--host", "0.0.0.0", "--replicas", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 2, proc.stderr
    assert "refusing to start" in proc.stderr and "LBPROXY_ADMIN_TOKEN" in proc.stderr
