#!/usr/bin/env bash
# Render deploy/kubernetes/ (plain manifests for teams without Helm) from the chart.
#
#   scripts/render-manifests.sh           # rewrite deploy/kubernetes/*.yaml from the chart
#   scripts/render-manifests.sh DIR       # render into DIR instead (tests compare DIR with the
#                                         # committed files: tests/test_manifests.py)
#   scripts/render-manifests.sh --check   # exit 1, naming the files, when deploy/kubernetes has
#                                         # drifted from the chart
#
# helm template of helm/ckpt-exporter with deploy/kubernetes/values.yaml, release ckpt-exporter,
# namespace ckpt-exporter: one file per chart template, plus kustomization.yaml listing them
# (`kubectl apply -k deploy/kubernetes`; kustomize's namespace and images fields then override
# the namespace and the image without editing the files). The two labels that only Helm makes
# true (helm.sh/chart, app.kubernetes.io/managed-by: Helm) are left out.
#
# Environment: HELM (default: helm on PATH, else .tools/bin/helm).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo_root/helm/ckpt-exporter"
manifests="$repo_root/deploy/kubernetes"
release="ckpt-exporter"
namespace="ckpt-exporter"

if [[ -n "${HELM:-}" ]]; then
    helm="$HELM"
elif command -v helm >/dev/null 2>&1; then
    helm="$(command -v helm)"
elif [[ -x "$repo_root/.tools/bin/helm" ]]; then
    helm="$repo_root/.tools/bin/helm"
else
    echo "render-manifests: helm not found (HELM, PATH, .tools/bin/helm); run scripts/install-helm.sh" >&2
    exit 1
fi

check=0
out="$manifests"
case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    *) out="$1" ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$helm" template "$release" "$chart" --namespace "$namespace" -f "$manifests/values.yaml" \
    --output-dir "$work/rendered" >/dev/null

mkdir -p "$work/out"
{
    echo "# Rendered from helm/ckpt-exporter by scripts/render-manifests.sh (values: values.yaml);"
    echo "# do not edit the manifests by hand. kubectl apply -k deploy/kubernetes"
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "namespace: $namespace"
    echo "resources:"
} >"$work/out/kustomization.yaml"
for file in "$work/rendered/ckpt-exporter/templates/"*.yaml; do
    name="$(basename "$file")"
    sed -e '/^ *helm\.sh\/chart: /d' -e '/^ *app\.kubernetes\.io\/managed-by: Helm$/d' "$file" \
        >"$work/out/$name"
    echo "  - $name" >>"$work/out/kustomization.yaml"
done

if ((check)); then
    drift=()
    for file in "$work/out/"*.yaml; do
        name="$(basename "$file")"
        cmp -s "$file" "$manifests/$name" || drift+=("$name")
    done
    for file in "$manifests/"*.yaml; do
        name="$(basename "$file")"
        [[ "$name" == values.yaml || -e "$work/out/$name" ]] || drift+=("$name (not rendered by the chart)")
    done
    if ((${#drift[@]} > 0)); then
        echo "render-manifests: deploy/kubernetes differs from the chart: ${drift[*]}; run scripts/render-manifests.sh" >&2
        exit 1
    fi
    echo "deploy/kubernetes matches the chart"
    exit 0
fi

mkdir -p "$out"
if [[ "$out" == "$manifests" ]]; then
    # Files of templates that no longer render must go too; values.yaml is the input.
    find "$out" -maxdepth 1 -name '*.yaml' ! -name values.yaml -delete
fi
cp "$work/out/"*.yaml "$out/"
echo "rendered $(find "$work/out" -name '*.yaml' | wc -l) files into $out"
