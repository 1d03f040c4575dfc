#!/usr/bin/env bash
# Check the Helm chart: lint, render every scenario, validate the manifests offline.
#
#   scripts/helm-check.sh
#
# 1. helm lint --strict helm/ckpt-exporter with each ci/*-values.yaml, and the sidecar example.
# 2. helm template for each ci/*-values.yaml scenario and for examples/sidecar.
# 3. The plain manifests of deploy/kubernetes/: scripts/render-manifests.sh --check (they still
#    match the chart), and validated with the scenarios below.
# 4. Validate every rendered manifest with kubernetes-validate (strict schemas of one fixed
#    Kubernetes version, bundled in the package: no cluster and no network needed). The Prometheus
#    Operator kinds (ServiceMonitor, PodMonitor, PrometheusRule) are CRDs that kubernetes-validate
#    has no schema for: they are split out of the stream and get a structural check here instead.
#
# Installs what is missing: helm (scripts/install-helm.sh, into .tools/bin) and kubernetes-validate
# (pip, into the venv .tools/helm-check-venv). Exits non-zero on any failure.
#
# Environment:
#   HELM                 helm binary to use (default: helm on PATH, else .tools/bin/helm, installed
#                        when missing)
#   KUBE_VERSION         Kubernetes version to validate against (default 1.30.0)
#   KUBERNETES_VALIDATE  pip requirement (default kubernetes-validate==1.37.0)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo_root/helm/ckpt-exporter"
example="$chart/examples/sidecar"
tools="$repo_root/.tools"
kube_version="${KUBE_VERSION:-1.30.0}"
kv_requirement="${KUBERNETES_VALIDATE:-kubernetes-validate==1.37.0}"
release="ckpt-exporter"
namespace="ckpt-exporter"

say() { printf '==> %s\n' "$*"; }
fail_count=0
failures=()
record_failure() { fail_count=$((fail_count + 1)); failures+=("$1"); printf 'FAIL: %s\n' "$1"; }

# --- tools ----------------------------------------------------------------------------------------
if [[ -n "${HELM:-}" ]]; then
    helm="$HELM"
elif command -v helm >/dev/null 2>&1; then
    helm="$(command -v helm)"
elif [[ -x "$tools/bin/helm" ]]; then
    helm="$tools/bin/helm"
else
    say "installing helm"
    helm="$(bash "$repo_root/scripts/install-helm.sh")"
fi
"$helm" version --short >/dev/null || { echo "helm at $helm does not run" >&2; exit 1; }

venv="$tools/helm-check-venv"
kv_python="$venv/bin/python"
if ! "$kv_python" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
    say "installing $kv_requirement into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$kv_requirement" pyyaml
fi
kv_version="$("$kv_python" -m kubernetes_validate --version)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say "helm $("$helm" version --short), kubernetes-validate $kv_version, Kubernetes $kube_version"

# --- scenarios ------------------------------------------------------------------------------------
shopt -s nullglob
values_files=("$chart"/ci/*-values.yaml)
shopt -u nullglob
if ((${#values_files[@]} == 0)); then
    echo "no ci/*-values.yaml in $chart" >&2
    exit 1
fi

say "building the sidecar example's dependency"
"$helm" dependency build "$example" >"$work/dependency-build.log" 2>&1 \
    || { cat "$work/dependency-build.log"; record_failure "helm dependency build examples/sidecar"; }

# --- lint -----------------------------------------------------------------------------------------
lint_ok=0
for values in "${values_files[@]}"; do
    name="$(basename "$values")"
    if "$helm" lint "$chart" --strict -f "$values" --kube-version "$kube_version" >"$work/lint.log" 2>&1; then
        lint_ok=$((lint_ok + 1))
        echo "lint --strict ok: $name"
    else
        cat "$work/lint.log"
        record_failure "helm lint --strict -f ci/$name"
    fi
done
if "$helm" lint "$example" --strict --kube-version "$kube_version" >"$work/lint.log" 2>&1; then
    lint_ok=$((lint_ok + 1))
    echo "lint --strict ok: examples/sidecar"
else
    cat "$work/lint.log"
    record_failure "helm lint --strict examples/sidecar"
fi

# --- template -------------------------------------------------------------------------------------
rendered=()
for values in "${values_files[@]}"; do
    name="$(basename "$values" -values.yaml)"
    out="$work/$name.yaml"
    if "$helm" template "$release" "$chart" -n "$namespace" -f "$values" \
        --kube-version "$kube_version" >"$out" 2>"$work/template.err"; then
        rendered+=("$out")
        echo "template ok: ci/$name-values.yaml"
    else
        cat "$work/template.err"
        record_failure "helm template -f ci/$name-values.yaml"
    fi
done
out="$work/example-sidecar.yaml"
if "$helm" template my-app "$example" -n "$namespace" --kube-version "$kube_version" \
    >"$out" 2>"$work/template.err"; then
    rendered+=("$out")
    echo "template ok: examples/sidecar"
else
    cat "$work/template.err"
    record_failure "helm template examples/sidecar"
fi

# --- plain manifests (deploy/kubernetes) ----------------------------------------------------------
if HELM="$helm" bash "$repo_root/scripts/render-manifests.sh" --check; then
    out="$work/deploy-kubernetes.yaml"
    : >"$out"
    # The manifests kustomization.yaml lists, as one stream (not values.yaml, the chart's input).
    while read -r manifest; do
        cat "$repo_root/deploy/kubernetes/$manifest" >>"$out"
        echo >>"$out"
    done < <(sed -n 's/^  - //p' "$repo_root/deploy/kubernetes/kustomization.yaml")
    rendered+=("$out")
else
    record_failure "deploy/kubernetes drifted from the chart (scripts/render-manifests.sh)"
fi

# --- validate -------------------------------------------------------------------------------------
# Split each rendered stream: core kinds go to <name>.core.yaml for kubernetes-validate; the
# Prometheus Operator CRD kinds are checked for their required shape here.
validated=0
crd_checked=0
for out in "${rendered[@]}"; do
    name="$(basename "$out" .yaml)"
    core="$work/$name.core.yaml"
    if ! counts="$("$kv_python" - "$out" "$core" <<'PY'
import sys

import yaml

CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
source, core_path = sys.argv[1], sys.argv[2]
with open(source, encoding="utf-8") as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
errors = []
core = []
crd = 0


def need(cond, what):
    if not cond:
        errors.append(what)


for doc in docs:
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    need(isinstance(doc.get("apiVersion"), str) and kind and name, f"{where}: apiVersion, kind, metadata.name")
    if kind not in CRD_KINDS:
        core.append(doc)
        continue
    crd += 1
    spec = doc.get("spec") or {}
    need(doc.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion monitoring.coreos.com/v1")
    need(isinstance((doc.get("metadata") or {}).get("namespace"), str), f"{where}: metadata.namespace")
    if kind in ("ServiceMonitor", "PodMonitor"):
        key = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
        endpoints = spec.get(key)
        need(isinstance(endpoints, list) and endpoints, f"{where}: spec.{key} is a non-empty list")
        for ep in endpoints or []:
            need(ep.get("port") == "http-metrics", f"{where}: endpoint port http-metrics")
            for field in ("relabelings", "metricRelabelings"):
                need(isinstance(ep.get(field, []), list), f"{where}: {field} is a list")
        selector = spec.get("selector") or {}
        need(bool(selector.get("matchLabels") or selector.get("matchExpressions")), f"{where}: spec.selector")
    else:
        groups = spec.get("groups")
        need(isinstance(groups, list) and groups, f"{where}: spec.groups is a non-empty list")
        for group in groups or []:
            need(isinstance(group.get("name"), str), f"{where}: group name")
            for rule in group.get("rules") or []:
                need(isinstance(rule.get("expr"), (str, int)), f"{where}: rule expr")
                need(bool(rule.get("alert")) != bool(rule.get("record")), f"{where}: alert xor record")
with open(core_path, "w", encoding="utf-8") as f:
    yaml.safe_dump_all(core, f, sort_keys=False)
for error in errors:
    print("ERROR", error, file=sys.stderr)
print(len(core), crd)
sys.exit(1 if errors else 0)
PY
)"; then
        record_failure "structure of $name (CRD kinds)"
        continue
    fi
    read -r n_core n_crd <<<"$counts"
    crd_checked=$((crd_checked + n_crd))
    if ((n_core == 0)); then
        echo "validate: $name has no core manifests"
        continue
    fi
    # --strict: the strict schemas reject unknown fields. A WARN (no schema for a kind) also fails:
    # every kind left here must be a core Kubernetes kind.
    set +e
    report="$("$kv_python" -m kubernetes_validate --strict --quiet -k "$kube_version" "$core" 2>&1)"
    rc=$?
    set -e
    if ((rc != 0)) || grep -qE '^(WARN|ERROR|FATAL)' <<<"$report"; then
        printf '%s\n' "$report"
        record_failure "kubernetes-validate $name ($n_core manifests)"
    else
        validated=$((validated + n_core))
        echo "validate ok: $name ($n_core manifests, $n_crd CRD manifests checked structurally)"
    fi
done

# --- summary --------------------------------------------------------------------------------------
echo
say "summary"
echo "helm lint --strict passed: $lint_ok/$((${#values_files[@]} + 1))"
echo "scenarios rendered:        ${#rendered[@]}/$((${#values_files[@]} + 2)) (with deploy/kubernetes)"
echo "manifests validated:       $validated (kubernetes-validate --strict, Kubernetes $kube_version)"
echo "CRD manifests checked:     $crd_checked (ServiceMonitor/PodMonitor/PrometheusRule, structure only)"
if ((fail_count > 0)); then
    echo "FAILED: $fail_count"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "OK"
