"""Template tests of the Helm chart (helm/ckpt-exporter): render with `helm template`, assert on the YAML.

helm is looked up as $HELM, then on PATH, then at .tools/bin/helm (scripts/install-helm.sh puts it
there). Without helm these tests skip, except under CI=true, where they fail: CI must install helm.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "ckpt-exporter"
CI_DIR = CHART / "ci"
RELEASE = "rel"
NAMESPACE = "apps"
FULLNAME = "rel-ckpt-exporter"
CONFIG_FILE = "/etc/ckpt-exporter/config.yaml"
KEY_DIR = "/var/run/secrets/ckpt-exporter"
KEY_FILE = KEY_DIR + "/api-key"
# Where the release workflow publishes the image, with the chart's default owner.
IMAGE = "ghcr.io/ckpt-exporter/ckpt-exporter"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESOURCES = {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}


def _find_helm() -> str | None:
    candidates = [os.environ.get("HELM"), "helm", str(REPO / ".tools" / "bin" / "helm")]
    for candidate in candidates:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def helm() -> str:
    found = _find_helm()
    if found is None:
        message = "helm not found ($HELM, PATH, .tools/bin/helm); run scripts/install-helm.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


Docs = list[dict[str, Any]]


def run_helm(helm: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


def render(helm: str, *args: str, chart: Path = CHART, release: str = RELEASE) -> Docs:
    result = run_helm(helm, "template", release, str(chart), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def sets(*settings: str) -> list[str]:
    """--set arguments, one pair per setting."""
    return [arg for setting in settings for arg in ("--set", setting)]


def scenario(helm: str, name: str, *extra: str) -> Docs:
    return render(helm, "-f", str(CI_DIR / f"{name}-values.yaml"), *extra)


def kinds(docs: Docs) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def one(docs: Docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str = "ckpt-exporter") -> dict[str, Any]:
    found = [c for c in pod["containers"] if c["name"] == name]
    assert len(found) == 1
    return found[0]


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    found = [v for v in pod["volumes"] if v["name"] == name]
    assert len(found) == 1, f"volume {name}: {pod['volumes']}"
    return found[0]


def mount(ctr: dict[str, Any], name: str) -> dict[str, Any]:
    found = [m for m in ctr["volumeMounts"] if m["name"] == name]
    assert len(found) == 1, f"mount {name}: {ctr['volumeMounts']}"
    return found[0]


def env_of(ctr: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in ctr.get("env", [])}


def config_of(docs: Docs) -> dict[str, Any]:
    cm = one(docs, "ConfigMap", FULLNAME)
    parsed: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
    return parsed


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- chart metadata ---------------------------------------------------------------------------------


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["type"] == "application"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == project["version"]


def test_every_ci_scenario_lints_strict(helm: str) -> None:
    values = sorted(CI_DIR.glob("*-values.yaml"))
    assert {v.name for v in values} >= {
        "default-values.yaml",
        "sidecar-values.yaml",
        "monitoring-values.yaml",
        "sharded-values.yaml",
        "workload-identity-values.yaml",
    }
    for path in values:
        result = run_helm(helm, "lint", str(CHART), "--strict", "-f", str(path))
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


# --- default (standalone) ---------------------------------------------------------------------------


def test_default_renders_deployment_service_serviceaccount_configmap_only(helm: str) -> None:
    docs = scenario(helm, "default")
    assert kinds(docs) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in docs)
    assert not CRD_KINDS & set(kinds(docs))


def test_default_security_contexts_resources_and_service_account(helm: str) -> None:
    docs = scenario(helm, "default")
    pod = pod_spec(one(docs, "Deployment", FULLNAME))
    ctr = container(pod)
    assert pod["securityContext"] == POD_SECURITY_CONTEXT
    assert ctr["securityContext"] == CONTAINER_SECURITY_CONTEXT
    assert ctr["resources"] == RESOURCES
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    sa = one(docs, "ServiceAccount", FULLNAME)
    assert sa["automountServiceAccountToken"] is False
    # The root filesystem is read-only: /tmp is an emptyDir.
    assert mount(ctr, "ckpt-exporter-tmp")["mountPath"] == "/tmp"
    assert volume(pod, "ckpt-exporter-tmp")["emptyDir"] == {"sizeLimit": "64Mi"}


def test_default_container_image_args_port_and_probes(helm: str) -> None:
    docs = scenario(helm, "default")
    ctr = container(pod_spec(one(docs, "Deployment", FULLNAME)))
    assert ctr["image"] == f"{IMAGE}:0.1.0"
    assert ctr["args"] == ["--config", CONFIG_FILE]
    assert env_of(ctr)["CKPT_EXPORTER_CONFIG_FILE"] == CONFIG_FILE
    assert ctr["ports"] == [{"name": "http-metrics", "containerPort": 9842, "protocol": "TCP"}]
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert ctr["livenessProbe"]["periodSeconds"] == 15
    assert ctr["readinessProbe"]["periodSeconds"] == 10
    assert "enabled" not in ctr["livenessProbe"]


def test_default_service(helm: str) -> None:
    docs = scenario(helm, "default")
    svc = one(docs, "Service", FULLNAME)
    deploy = one(docs, "Deployment", FULLNAME)
    assert svc["spec"]["type"] == "ClusterIP"
    assert "clusterIP" not in svc["spec"]
    assert svc["spec"]["ports"] == [
        {"name": "http-metrics", "port": 9842, "targetPort": "http-metrics", "protocol": "TCP"}
    ]
    assert (
        svc["spec"]["selector"]
        == deploy["spec"]["selector"]["matchLabels"]
        == {
            "app.kubernetes.io/name": "ckpt-exporter",
            "app.kubernetes.io/instance": RELEASE,
        }
    )
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_api_key_secret_is_mounted_read_only_and_named_in_the_config(helm: str) -> None:
    docs = scenario(helm, "default")
    pod = pod_spec(one(docs, "Deployment", FULLNAME))
    ctr = container(pod)
    secret = volume(pod, "ckpt-exporter-api-key")["secret"]
    assert secret == {
        "secretName": "openai-api-key",
        "defaultMode": 0o440,
        "items": [{"key": "api-key", "path": "api-key"}],
    }
    key_mount = mount(ctr, "ckpt-exporter-api-key")
    assert key_mount == {"name": "ckpt-exporter-api-key", "mountPath": KEY_DIR, "readOnly": True}
    assert "subPath" not in key_mount  # a subPath mount would never see a rotated Secret
    config = config_of(docs)
    assert config["api_key_file"] == KEY_FILE == f"{key_mount['mountPath']}/{secret['items'][0]['path']}"
    assert "api_key" not in config
    assert not any("KEY" in name for name in env_of(ctr))


def test_config_is_mounted_and_holds_the_merged_settings(helm: str) -> None:
    docs = scenario(helm, "default")
    pod = pod_spec(one(docs, "Deployment", FULLNAME))
    ctr = container(pod)
    assert volume(pod, "ckpt-exporter-config")["configMap"] == {"name": FULLNAME}
    assert mount(ctr, "ckpt-exporter-config") == {
        "name": "ckpt-exporter-config",
        "mountPath": "/etc/ckpt-exporter",
        "readOnly": True,
    }
    assert config_of(docs) == {
        "api_base_url": "https://api.openai.com/v1",
        "api_key_file": KEY_FILE,
        "jobs": ["ftjob-abc123", "ftjob-def456"],
        "listen_address": "0.0.0.0",
        "listen_port": 9842,
        "log_format": "json",
        "log_level": "INFO",
        "poll_interval_seconds": 60,
    }


def test_checksum_annotation_is_the_sha256_of_config_yaml(helm: str) -> None:
    docs = scenario(helm, "default")
    annotations = one(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["annotations"]
    config_yaml = one(docs, "ConfigMap", FULLNAME)["data"]["config.yaml"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert annotations["checksum/config"] == sha256(config_yaml)


def test_checksum_changes_with_the_config_and_only_then(helm: str) -> None:
    def checksum(*extra: str) -> str:
        docs = scenario(helm, "default", *extra)
        value: str = one(docs, "Deployment", FULLNAME)["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return value

    base = checksum()
    assert checksum() == base
    assert checksum("--set", "replicaCount=2") == base  # not a setting: no roll needed
    changed = checksum("--set", "config.poll_interval_seconds=30")
    assert changed != base
    assert checksum("--set", "config.log_level=DEBUG") not in {base, changed}


def test_listen_port_drives_the_container_port(helm: str) -> None:
    docs = scenario(helm, "default", "--set", "config.listen_port=9900")
    ctr = container(pod_spec(one(docs, "Deployment", FULLNAME)))
    assert ctr["ports"][0]["containerPort"] == 9900
    assert config_of(docs)["listen_port"] == 9900
    assert one(docs, "Service", FULLNAME)["spec"]["ports"][0]["targetPort"] == "http-metrics"


def test_image_tag_digest_and_registry(helm: str) -> None:
    def image(*extra: str) -> str:
        docs = scenario(helm, "default", *extra)
        value: str = container(pod_spec(one(docs, "Deployment", FULLNAME)))["image"]
        return value

    assert image() == f"{IMAGE}:0.1.0"
    assert image("--set", "image.tag=1.2.3") == f"{IMAGE}:1.2.3"
    # A fork's releases, an image pushed to another registry, a local image.
    assert image("--set", "image.repository=my-org/ckpt-exporter") == "ghcr.io/my-org/ckpt-exporter:0.1.0"
    assert (
        image(*sets("image.registry=registry.example.com/", "image.repository=team/ckpt-exporter"))
        == "registry.example.com/team/ckpt-exporter:0.1.0"
    )
    assert image(*sets("image.registry=", "image.repository=ckpt-exporter")) == "ckpt-exporter:0.1.0"
    digest = "sha256:" + "a" * 64
    assert image("--set", f"image.digest={digest}") == f"{IMAGE}@{digest}"


def test_no_key_fails_with_a_helpful_message(helm: str) -> None:
    result = run_helm(helm, "template", RELEASE, str(CHART))
    assert result.returncode != 0
    assert "no OpenAI API key" in result.stderr
    assert "apiKey.existingSecret" in result.stderr
    assert "demo=true" in result.stderr


def test_schema_rejects_bad_values(helm: str) -> None:
    bad = {
        "mode=foo": "/mode",
        "config.log_format=xml": "/config/log_format",
        "config.api_key=sk-secret": "/config/api_key",
        "sharding.replicas=0": "/sharding/replicas",
        "nosuchvalue=1": "nosuchvalue",
    }
    for setting, where in bad.items():
        result = run_helm(
            helm, "template", RELEASE, str(CHART), "-f", str(CI_DIR / "default-values.yaml"), "--set", setting
        )
        assert result.returncode != 0, setting
        assert "schema" in result.stderr and where in result.stderr, (setting, result.stderr)
        assert "sk-secret" not in result.stdout


def test_a_user_managed_key_file_is_accepted_without_a_secret(helm: str) -> None:
    docs = render(
        helm,
        *sets(
            "config.api_key_file=/keys/openai",
            "extraVolumes[0].name=keys",
            "extraVolumes[0].csi.driver=secrets-store.csi.k8s.io",
            "extraVolumeMounts[0].name=keys",
            "extraVolumeMounts[0].mountPath=/keys",
            "extraEnv[0].name=HTTPS_PROXY",
            "extraEnv[0].value=http://proxy:3128",
        ),
    )
    pod = pod_spec(one(docs, "Deployment", FULLNAME))
    assert config_of(docs)["api_key_file"] == "/keys/openai"
    assert env_of(container(pod)) == {
        "CKPT_EXPORTER_CONFIG_FILE": CONFIG_FILE,
        "HTTPS_PROXY": "http://proxy:3128",
    }
    assert [v["name"] for v in pod["volumes"]] == ["ckpt-exporter-config", "ckpt-exporter-tmp", "keys"]
    assert mount(container(pod), "keys")["mountPath"] == "/keys"


# --- demo -------------------------------------------------------------------------------------------


def test_demo_needs_no_key(helm: str) -> None:
    docs = scenario(helm, "demo")
    pod = pod_spec(one(docs, "Deployment", FULLNAME))
    ctr = container(pod)
    assert ctr["args"] == ["demo"]
    assert env_of(ctr)["CKPT_EXPORTER_CONFIG_FILE"] == CONFIG_FILE
    assert [v["name"] for v in pod["volumes"]] == ["ckpt-exporter-config", "ckpt-exporter-tmp"]
    assert "api_key_file" not in config_of(docs)


# --- monitoring -------------------------------------------------------------------------------------


def test_monitors_rules_dashboard_and_policy_are_off_by_default(helm: str) -> None:
    docs = scenario(helm, "default")
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"} & set(kinds(docs))
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"] == [FULLNAME]


def test_monitoring_scenario_service_monitor(helm: str) -> None:
    docs = scenario(helm, "monitoring")
    assert kinds(docs) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    sm = one(docs, "ServiceMonitor", FULLNAME)
    svc = one(docs, "Service", FULLNAME)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"] == [
        {
            "port": "http-metrics",
            "path": "/metrics",
            "scheme": "http",
            "interval": "60s",
            "scrapeTimeout": "15s",
            "honorLabels": False,
            "relabelings": [
                {"action": "replace", "replacement": "ckpt-exporter", "targetLabel": "job"},
                {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"},
            ],
            "metricRelabelings": [{"action": "drop", "regex": "go_.*", "sourceLabels": ["__name__"]}],
        }
    ]


def test_scrape_job_name_matches_the_alert_rules(helm: str) -> None:
    """files/alerts.yaml selects up{job="..."}: the monitors must produce that job label."""
    rules_text = (CHART / "files" / "alerts.yaml").read_text()
    jobs_in_rules = set(re.findall(r'\bjob="([^"]+)"', rules_text))
    for name, kind in (("monitoring", "ServiceMonitor"), ("sidecar", "PodMonitor")):
        monitor = one(scenario(helm, name), kind)
        key = "endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints"
        job_relabel = monitor["spec"][key][0]["relabelings"][0]
        assert job_relabel["targetLabel"] == "job"
        assert jobs_in_rules <= {job_relabel["replacement"]}


def test_prometheus_rule_wraps_alerts_yaml_verbatim(helm: str) -> None:
    docs = scenario(helm, "monitoring")
    rule = one(docs, "PrometheusRule", FULLNAME)
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "monitoring"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == {"groups": source["groups"]}
    assert source["groups"], "files/alerts.yaml has no groups"


def test_dashboard_configmap_is_dashboard_json_byte_for_byte(helm: str) -> None:
    docs = scenario(helm, "monitoring")
    cm = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Fine-tuning"}
    assert cm["data"] == {"ckpt-exporter.json": (CHART / "files" / "dashboard.json").read_text()}


def test_dashboard_label_is_configurable(helm: str) -> None:
    docs = scenario(
        helm, "monitoring", *sets("dashboard.label=grafana.io/dashboard", "dashboard.labelValue=yes")
    )
    labels = one(docs, "ConfigMap", f"{FULLNAME}-dashboard")["metadata"]["labels"]
    assert labels["grafana.io/dashboard"] == "yes"
    assert "grafana_dashboard" not in labels


def test_network_policy_admits_only_scrapes_and_allows_dns_and_https(helm: str) -> None:
    docs = scenario(helm, "monitoring")
    policy = one(docs, "NetworkPolicy", FULLNAME)["spec"]
    assert policy["podSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [
        {
            "ports": [{"port": "http-metrics", "protocol": "TCP"}],
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                }
            ],
        }
    ]
    assert policy["egress"] == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {
            "ports": [{"port": 443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]}}],
        },
    ]


# --- sidecar ----------------------------------------------------------------------------------------


def test_sidecar_scenario_renders_configmap_and_pod_monitor_only(helm: str) -> None:
    docs = scenario(helm, "sidecar")
    assert kinds(docs) == ["ConfigMap", "PodMonitor"]
    pm = one(docs, "PodMonitor", FULLNAME)
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["selector"] == {"matchLabels": {"ckpt-exporter/sidecar": FULLNAME}}
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http-metrics", "/metrics", "30s")
    assert config_of(docs)["api_key_file"] == KEY_FILE


SIDECAR_MISFITS = ["sharding.enabled=true", "serviceMonitor.enabled=true", "networkPolicy.enabled=true"]


@pytest.mark.parametrize("setting", SIDECAR_MISFITS)
def test_sidecar_refuses_what_it_cannot_do(helm: str, setting: str) -> None:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "-f", str(CI_DIR / "sidecar-values.yaml"), "--set", setting
    )
    assert result.returncode != 0
    assert setting.split(".")[0] in result.stderr


@pytest.fixture(scope="module")
def sidecar_example(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/sidecar with its dependency built, in a copy (`helm dependency build` writes charts/)."""
    copy = tmp_path_factory.mktemp("chart") / "ckpt-exporter"
    shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    example = copy / "examples" / "sidecar"
    built = run_helm(helm, "dependency", "build", str(example))
    assert built.returncode == 0, built.stderr
    return example


def test_sidecar_example_adds_the_exporter_to_a_deployment(helm: str, sidecar_example: Path) -> None:
    docs = render(helm, chart=sidecar_example, release="shop")
    assert kinds(docs) == ["ConfigMap", "Deployment", "PodMonitor"]

    exporter_fullname = "shop-ckpt-exporter"
    deploy = one(docs, "Deployment", "shop-my-app")
    template = deploy["spec"]["template"]
    pod = template["spec"]
    assert [c["name"] for c in pod["containers"]] == ["app", "ckpt-exporter"]
    ctr = container(pod)
    assert ctr["image"] == f"{IMAGE}:0.1.0"
    assert ctr["args"] == ["--config", CONFIG_FILE]
    assert ctr["securityContext"] == CONTAINER_SECURITY_CONTEXT
    assert ctr["resources"] == RESOURCES
    assert ctr["ports"] == [{"name": "http-metrics", "containerPort": 9842, "protocol": "TCP"}]
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    # A sidecar's readiness would gate the host pod until every job was polled: off by default.
    assert "readinessProbe" not in ctr
    assert "restartPolicy" not in ctr
    assert {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]} == {
        "ckpt-exporter-config": "/etc/ckpt-exporter",
        "ckpt-exporter-tmp": "/tmp",
        "ckpt-exporter-api-key": KEY_DIR,
    }
    assert [v["name"] for v in pod["volumes"]] == [
        "app-tmp",
        "ckpt-exporter-config",
        "ckpt-exporter-tmp",
        "ckpt-exporter-api-key",
    ]
    assert volume(pod, "ckpt-exporter-config")["configMap"] == {"name": exporter_fullname}
    # No fsGroup in a host pod: the key file is world-readable inside the pod (0444).
    assert volume(pod, "ckpt-exporter-api-key")["secret"]["defaultMode"] == 0o444

    pm = one(docs, "PodMonitor", exporter_fullname)
    assert pm["spec"]["selector"] == {"matchLabels": {"ckpt-exporter/sidecar": exporter_fullname}}
    assert pm["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    config_yaml = one(docs, "ConfigMap", exporter_fullname)["data"]["config.yaml"]
    assert yaml.safe_load(config_yaml)["jobs"] == ["ftjob-abc123"]
    assert template["metadata"]["annotations"]["checksum/config"] == sha256(config_yaml)


def test_sidecar_readiness_and_native_sidecar_knobs(helm: str, sidecar_example: Path) -> None:
    knobs = sets("ckpt-exporter.sidecar.readinessProbe=true", "ckpt-exporter.sidecar.nativeSidecar=true")
    docs = render(helm, *knobs, chart=sidecar_example, release="shop")
    ctr = container(pod_spec(one(docs, "Deployment", "shop-my-app")))
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert ctr["restartPolicy"] == "Always"


# --- sharded ----------------------------------------------------------------------------------------


def test_sharded_scenario_statefulset(helm: str) -> None:
    docs = scenario(helm, "sharded")
    assert kinds(docs) == ["ConfigMap", "Service", "ServiceAccount", "ServiceMonitor", "StatefulSet"]
    sts = one(docs, "StatefulSet", FULLNAME)
    svc = one(docs, "Service", FULLNAME)
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    pod = pod_spec(sts)
    ctr = container(pod)
    env = env_of(ctr)
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["CKPT_EXPORTER_SHARD_FROM_POD_NAME"] == "true"
    assert env["CKPT_EXPORTER_TOTAL_SHARDS"] == "3"
    assert pod["securityContext"] == POD_SECURITY_CONTEXT
    assert ctr["securityContext"] == CONTAINER_SECURITY_CONTEXT
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = config_of(docs)
    assert "shard" not in config and "total_shards" not in config
    assert config["discover"] is True
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == sha256(one(docs, "ConfigMap", FULLNAME)["data"]["config.yaml"])


def test_sharded_replicas_follow_the_value(helm: str) -> None:
    docs = scenario(helm, "sharded", "--set", "sharding.replicas=5")
    sts = one(docs, "StatefulSet", FULLNAME)
    assert sts["spec"]["replicas"] == 5
    assert env_of(container(pod_spec(sts)))["CKPT_EXPORTER_TOTAL_SHARDS"] == "5"


def test_unsharded_pods_get_no_shard_environment(helm: str) -> None:
    ctr = container(pod_spec(one(scenario(helm, "default"), "Deployment", FULLNAME)))
    assert set(env_of(ctr)) == {"CKPT_EXPORTER_CONFIG_FILE"}


# --- keyless Azure: workload identity ---------------------------------------------------------------

CLIENT_ID = "00000000-1111-2222-3333-444444444444"
TENANT_ID = "99999999-8888-7777-6666-555555555555"
FOUNDRY_URL = "https://example-resource.services.ai.azure.com/api/projects/example-project/openai/v1"
WI_LABEL = {"azure.workload.identity/use": "true"}


def secret_references(node: Any, where: str = "") -> list[str]:
    """Every place a rendered manifest names a Secret (a Secret object, a volume, an env source)."""
    found: list[str] = []
    if isinstance(node, dict):
        if node.get("kind") == "Secret":
            found.append(f"{where}kind: Secret")
        for key, value in node.items():
            if key in {"secret", "secretName", "secretRef", "secretKeyRef"}:
                found.append(f"{where}{key}")
            found += secret_references(value, f"{where}{key}.")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += secret_references(item, f"{where}{i}.")
    return found


def test_workload_identity_scenario_annotates_labels_and_needs_no_secret(helm: str) -> None:
    docs = scenario(helm, "workload-identity")
    assert kinds(docs) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
    sa = one(docs, "ServiceAccount", FULLNAME)
    assert sa["metadata"]["annotations"] == {"azure.workload.identity/client-id": CLIENT_ID}
    # The webhook projects its own token; the Kubernetes API token stays unmounted.
    assert sa["automountServiceAccountToken"] is False
    deploy = one(docs, "Deployment", FULLNAME)
    template = deploy["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert "azure.workload.identity/use" not in deploy["spec"]["selector"]["matchLabels"]
    pod = pod_spec(deploy)
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    ctr = container(pod)
    # The webhook adds AZURE_*; a value set here would stop it (it never overwrites a variable).
    assert ctr["env"] == [{"name": "CKPT_EXPORTER_CONFIG_FILE", "value": CONFIG_FILE}]
    assert [v["name"] for v in pod["volumes"]] == ["ckpt-exporter-config", "ckpt-exporter-tmp"]
    assert [m["name"] for m in ctr["volumeMounts"]] == ["ckpt-exporter-config", "ckpt-exporter-tmp"]
    assert config_of(docs) == {
        "api_base_url": FOUNDRY_URL,
        "api_flavor": "azure",
        "azure_auth": "entra",
        "jobs": ["ftjob-abc123"],
        "listen_address": "0.0.0.0",
        "listen_port": 9842,
        "log_format": "json",
        "log_level": "INFO",
        "poll_interval_seconds": 60,
    }
    assert secret_references(docs) == []


def test_workload_identity_tenant_annotation(helm: str) -> None:
    docs = scenario(helm, "workload-identity", *sets(f"azure.workloadIdentity.tenantId={TENANT_ID}"))
    assert one(docs, "ServiceAccount", FULLNAME)["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": CLIENT_ID,
        "azure.workload.identity/tenant-id": TENANT_ID,
    }


def test_workload_identity_without_the_webhook_projects_the_token_itself(helm: str) -> None:
    docs = scenario(helm, "workload-identity-no-webhook")
    deploy = one(docs, "Deployment", FULLNAME)
    assert not WI_LABEL.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    pod = pod_spec(deploy)
    assert pod["automountServiceAccountToken"] is False
    ctr = container(pod)
    assert env_of(ctr) == {
        "CKPT_EXPORTER_CONFIG_FILE": CONFIG_FILE,
        "AZURE_CLIENT_ID": CLIENT_ID,
        "AZURE_TENANT_ID": TENANT_ID,
        "AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/",
    }
    assert mount(ctr, "azure-identity-token") == {
        "name": "azure-identity-token",
        "mountPath": "/var/run/secrets/azure/tokens",
        "readOnly": True,
    }
    assert volume(pod, "azure-identity-token") == {
        "name": "azure-identity-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "path": "azure-identity-token",
                        "audience": "api://AzureADTokenExchange",
                        "expirationSeconds": 3600,
                    }
                }
            ]
        },
    }
    assert config_of(docs)["azure_auth"] == "entra"
    assert secret_references(docs) == []


def test_entra_without_workload_identity_needs_no_key(helm: str) -> None:
    """Another Entra route (a managed identity, a service principal's variables): no key either."""
    entra = sets(
        "config.api_flavor=azure",
        "config.azure_auth=entra",
        "config.azure_token_scope=https://ai.azure.com/.default",
        f"config.azure_client_id={CLIENT_ID}",
        "config.jobs[0]=ftjob-a",
    )
    docs = render(helm, *entra)
    config = config_of(docs)
    assert "api_key_file" not in config
    assert (config["azure_auth"], config["azure_token_scope"], config["azure_client_id"]) == (
        "entra",
        "https://ai.azure.com/.default",
        CLIENT_ID,
    )
    assert secret_references(docs) == []
    assert "azure.workload.identity/client-id" not in (
        one(docs, "ServiceAccount", FULLNAME)["metadata"].get("annotations") or {}
    )


WORKLOAD_IDENTITY_MISTAKES = {
    "azure.workloadIdentity.clientId=": "needs azure.workloadIdentity.clientId",
    "config.azure_auth=key": 'config.azure_auth is "key"',
    "azure.workloadIdentity.webhook=false": "needs azure.workloadIdentity.tenantId",
    "azure.workloadIdentity.clientId=not-a-guid": "/azure/workloadIdentity/clientId",
    "config.azure_auth=oauth": "/config/azure_auth",
    "config.azure_token_scope=a b": "/config/azure_token_scope",
}


@pytest.mark.parametrize("setting", list(WORKLOAD_IDENTITY_MISTAKES))
def test_workload_identity_mistakes_are_refused_by_name(helm: str, setting: str) -> None:
    result = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "-f",
        str(CI_DIR / "workload-identity-values.yaml"),
        "--set",
        setting,
    )
    assert result.returncode != 0
    assert WORKLOAD_IDENTITY_MISTAKES[setting] in result.stderr, result.stderr


def test_sidecar_host_pods_get_the_workload_identity_label(helm: str, sidecar_example: Path) -> None:
    knobs = sets(
        "ckpt-exporter.apiKey.existingSecret=",
        "ckpt-exporter.azure.workloadIdentity.enabled=true",
        f"ckpt-exporter.azure.workloadIdentity.clientId={CLIENT_ID}",
    )
    docs = render(helm, *knobs, chart=sidecar_example, release="shop")
    template = one(docs, "Deployment", "shop-my-app")["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["metadata"]["labels"]["ckpt-exporter/sidecar"] == "shop-ckpt-exporter"
    config = yaml.safe_load(one(docs, "ConfigMap", "shop-ckpt-exporter")["data"]["config.yaml"])
    assert config["azure_auth"] == "entra"
    assert secret_references(docs) == []


# --- the exporter accepts what the chart renders ----------------------------------------------------


@pytest.mark.parametrize("name", ["default", "monitoring", "sidecar"])
def test_rendered_config_loads_in_the_exporter(helm: str, name: str, tmp_path: Path) -> None:
    settings = pytest.importorskip("ckpt_exporter.settings")
    config = config_of(scenario(helm, name))
    assert config["api_key_file"] == KEY_FILE
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-test\n")
    config["api_key_file"] = str(key_file)  # the Secret's file, as the pod would see it
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    loaded = settings.load_settings(config_file=config_file)
    assert loaded.listen_port == 9842
    assert loaded.jobs == config["jobs"]
    assert loaded.read_api_key() == "sk-test"
    assert loaded.log_level == config["log_level"]


def test_rendered_workload_identity_config_loads_in_the_exporter(helm: str, tmp_path: Path) -> None:
    settings = pytest.importorskip("ckpt_exporter.settings")
    if "azure_auth" not in settings.Settings.model_fields:
        pytest.skip("this exporter has no azure_auth setting yet (issue 13)")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config_of(scenario(helm, "workload-identity"))))
    loaded = settings.load_settings(config_file=config_file)
    assert (loaded.api_flavor, loaded.azure_auth, loaded.api_base_url) == ("azure", "entra", FOUNDRY_URL)
    assert loaded.jobs == ["ftjob-abc123"]
