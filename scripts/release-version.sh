#!/usr/bin/env bash
# Check a release tag against the versions the repository declares, and print the version.
#
#   scripts/release-version.sh v0.1.0     # prints 0.1.0, or one line on stderr and exit 1
#
# The release workflow (.github/workflows/release.yml) runs this first: the tag must be "v" +
# pyproject.toml's [project] version, and helm/ckpt-exporter/Chart.yaml's appVersion (the chart's
# default image tag) must be that same version, so that the image, the chart and the Python
# package of one release agree. Needs python3 >= 3.11 (tomllib).
set -euo pipefail

tag="${1:?usage: scripts/release-version.sh vX.Y.Z}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

python3 - "$tag" "$repo_root" <<'PY'
import re
import sys
import tomllib
from pathlib import Path

tag, root = sys.argv[1], Path(sys.argv[2])


def fail(message: str) -> None:
    print(f"release-version: {message}", file=sys.stderr)
    sys.exit(1)


try:
    version = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
    fail(f"cannot read [project] version from pyproject.toml ({exc})")
chart_text = (root / "helm" / "ckpt-exporter" / "Chart.yaml").read_text(encoding="utf-8")
# Chart.yaml is flat at this level: the top-level appVersion line, quoted or not.
found = re.search(r"""^appVersion:\s*["']?([^"'\s#]+)["']?\s*(?:#.*)?$""", chart_text, re.MULTILINE)
if found is None:
    fail("helm/ckpt-exporter/Chart.yaml has no appVersion")
app_version = found.group(1)
if tag != f"v{version}":
    fail(f"tag {tag} does not match pyproject.toml's version {version} (expected tag v{version})")
if app_version != version:
    fail(f"Chart.yaml appVersion {app_version} differs from pyproject.toml's version {version}")
print(version)
PY
