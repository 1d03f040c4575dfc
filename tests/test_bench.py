"""The benchmark's quick version, so that bench/ keeps working (the figures: docs/benchmarks.md).

It starts real processes (the fake API, the exporter, the naive baselines) on loopback for about two
minutes, so it belongs to the slow tier. Only machine-independent ratios with wide margins are
checked: bench/run.py --quick exits 1 when one fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.integration
def test_quick_benchmark_runs_and_its_checks_hold(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-5000:]}"
    results = json.loads(out.read_text())
    assert results["mode"] == "quick"
    failed = [check["name"] for check in results["checks"] if not check["holds"]]
    assert not failed, failed
    assert "| naive poller |" in run.stdout  # the markdown table, naive columns beside ours
