"""The package's layout rules (issue 11), checked so that they stay true as the package grows.

- every module of the package and of bench/ is small enough to read in one sitting (350 lines at
  most) and no function is over 60 lines;
- the exposition side (snapshot, families, exposition) imports nothing of the HTTP stack, so that
  rendering never depends on the transport;
- no test module imports another test module (shared helpers live in tests/helpers.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60
SOURCES = sorted([*(REPO / "ckpt_exporter").rglob("*.py"), *(REPO / "bench").glob("*.py")])
HTTP_STACK = ("httpx", "aiohttp", "tenacity", "aiolimiter")


def test_there_are_sources_to_check() -> None:
    assert REPO / "ckpt_exporter" / "exposition.py" in SOURCES
    assert REPO / "bench" / "run.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_and_function_sizes(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


@pytest.mark.parametrize("module", ["snapshot", "families", "exposition"])
def test_the_exposition_side_imports_nothing_of_the_http_stack(module: str) -> None:
    probe = (
        f"import sys; import ckpt_exporter.{module}; "
        f"print(','.join(sorted(m for m in {HTTP_STACK!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == ""


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                offenders.append(f"{path.name}: from {node.module}")
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
                offenders += [f"{path.name}: {name}" for name in names if name.startswith("tests.test_")]
    assert offenders == []
