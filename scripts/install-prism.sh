#!/usr/bin/env bash
# Install Stoplight Prism (npm @stoplight/prism-cli) into a project-local directory and print the
# path of its `prism` command.
#
# tests/test_references.py has Prism serve the published OpenAPI document of the fine-tuning API
# (tests/data/openai-fine-tuning-openapi.json) for the exporter to poll: statically, and with random
# schema-valid answers (`mock -d`). A test install step only; the exporter does not need Prism.
#
# Idempotent: when the command is already there and runs, nothing is downloaded.
#
# Environment:
#   PRISM_INSTALL_DIR   where to install (default: <repo>/.tools/prism, git-ignored)
#   PRISM_NPM_PACKAGE   npm package spec (default: @stoplight/prism-cli@5.16.0)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install_dir="${PRISM_INSTALL_DIR:-$repo_root/.tools/prism}"
package="${PRISM_NPM_PACKAGE:-@stoplight/prism-cli@5.16.0}"
target="$install_dir/node_modules/.bin/prism"

log() { printf 'install-prism: %s\n' "$*" >&2; }

if [[ -x "$target" ]] && "$target" --version >/dev/null 2>&1; then
    log "already installed: prism $("$target" --version)"
    printf '%s\n' "$target"
    exit 0
fi
command -v npm >/dev/null 2>&1 || { log "npm is required (apt-get install -y npm)"; exit 1; }
log "installing $package from the npm registry"
npm install --silent --no-audit --no-fund --prefix "$install_dir" "$package" >&2
"$target" --version >/dev/null  # refuse an install that does not run
log "installed prism $("$target" --version) to $target"
printf '%s\n' "$target"
