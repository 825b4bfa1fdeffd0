"""Deployment files: Kubernetes manifests, Compose, Prometheus config and the Dockerfile.

Parsed and checked against the app itself: probe paths are routes of `create_app`, ports
are the ones the shipped configs listen on, and the configs they carry validate.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from relay.app import create_app
from relay.config import Config
from tests.deploy.conftest import DEPLOY, KUBERNETES, ROOT, k8s_documents, valid_config

REQUIRED_KINDS = {
    "Deployment",
    "Service",
    "ConfigMap",
    "Secret",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_documents() if d.get("kind") == kind]


def _one(kind: str) -> dict[str, Any]:
    (doc,) = _by_kind(kind)
    return doc


def _get_routes(app: web.Application) -> set[str]:
    paths: set[str] = set()
    for route in app.router.routes():
        if route.method in ("GET", "*"):
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("formatter")
            if path:
                paths.add(path)
    return paths


def _configmap_config() -> Config:
    cm = _one("ConfigMap")
    secret = _one("Secret")
    return valid_config(yaml.safe_load(cm["data"]["relay.yml"]), dict(secret["stringData"]))


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


# --- Kubernetes ------------------------------------------------------------------------


def test_every_manifest_parses_with_kind_and_name() -> None:
    docs = k8s_documents()
    kinds = {d["kind"] for d in docs}
    assert kinds >= REQUIRED_KINDS
    for doc in docs:
        assert doc.get("apiVersion"), doc["__file__"]
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], doc["__file__"]


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _by_kind("Kustomization")
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    images = {i["name"] for i in kustomization["images"]}
    assert {c["image"] for c in containers} <= images


def test_configmap_policy_is_a_valid_config_using_the_secret() -> None:
    config = _configmap_config()
    secret = _one("Secret")
    assert config.redis is not None and config.spool is not None
    assert config.redis.url.reveal() == secret["stringData"]["REDIS_URL"]
    # every ${VAR} of the config is provided by the Secret
    text = _one("ConfigMap")["data"]["relay.yml"]
    assert set(re.findall(r"\$\{([A-Z_]+)\}", text)) <= set(secret["stringData"])


def test_deployment_probes_are_routes_of_the_app() -> None:
    config = _configmap_config()
    app = create_app(config)
    routes = _get_routes(app)
    deployment = _one("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.listen.port
    assert config.listen.metrics is not None
    assert ports["metrics"] == _port_of(config.listen.metrics)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes, (probe, sorted(routes))
        assert get["port"] in ports
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    # /metrics moves to its own listener with listen.metrics, off the public port
    assert "/metrics" not in routes
    # the same paths the Dockerfile and the docs name
    assert {"/healthz", "/readyz"} <= _get_routes(create_app(Config()))


def test_deployment_drains_gracefully() -> None:
    config = _configmap_config()
    spec = _one("Deployment")["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_timeout + pre_stop
    assert container["args"] == ["run", "--config", "/etc/relay/relay.yml"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_deployment_resources_security_and_volumes() -> None:
    config = _configmap_config()
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) <= set(volumes)
    # the config file comes from the ConfigMap, the spool lies on its own volume
    assert volumes["config"]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]
    assert mounts["config"] == "/etc/relay"
    assert config.spool is not None
    assert Path(config.spool.path).is_relative_to(mounts["spool"])
    assert "emptyDir" in volumes["spool"] or "persistentVolumeClaim" in volumes["spool"]
    (secret_ref,) = [e["secretRef"]["name"] for e in container["envFrom"]]
    assert secret_ref == _one("Secret")["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RELAY_LISTEN_HOST"] == "0.0.0.0"


def test_services_hpa_and_pdb_select_the_deployment() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in _by_kind("Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    hpa = _one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_kubernetes_readme_covers_redis_and_the_spool() -> None:
    text = (KUBERNETES / "README.md").read_text()
    for word in ("Sentinel", "Cluster", "standalone", "own spool", "emptyDir", "StatefulSet"):
        assert word in text


# --- Compose and Prometheus --------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _compose_relay_config() -> Config:
    compose = _compose()
    text = compose["configs"]["relay_config"]["content"].replace("$$", "$")
    env = {k: str(v) for k, v in compose["services"]["relay"]["environment"].items()}
    env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in env.items()}
    return valid_config(yaml.safe_load(text), env)


def test_compose_stack_is_wired() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"relay", "redis", "bugsink", "prometheus"} <= set(services)
    assert services["bugsink"]["image"].startswith("bugsink/bugsink")
    assert services["bugsink"]["environment"]["SECRET_KEY"]
    relay = services["relay"]
    assert relay["build"]["dockerfile"] == "Dockerfile"
    assert (DEPLOY / relay["build"]["context"] / "Dockerfile").is_file()
    assert relay["command"] == ["run", "--config", relay["environment"]["RELAY_CONFIG"]]
    config = _compose_relay_config()
    assert config.upstream.url == "http://bugsink:8000"
    assert config.redis is not None and config.redis.url.reveal().startswith("redis://redis:")
    assert config.spool is not None
    # only loopback on the host
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    assert f"127.0.0.1:{config.listen.port}:{config.listen.port}" in relay["ports"]
    # the DSN the header documents belongs to a configured project
    header = (DEPLOY / "docker-compose.yml").read_text()
    dsn = re.search(r"http://([0-9a-f]{32})@localhost:3000/(\d+)", header)
    assert dsn is not None
    project = next(p for p in config.projects if p.id == int(dsn.group(2)))
    assert dsn.group(1) in project.keys
    assert dsn.group(1) in services["bugsink-init"]["command"][-1].replace("-", "")


def test_prometheus_scrapes_the_relay_metrics_listener_and_loads_the_alerts() -> None:
    config = _compose_relay_config()
    assert config.listen.metrics is not None
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "relay"]
    (targets,) = [s["targets"] for s in job["static_configs"]]
    assert targets == [f"relay:{_port_of(config.listen.metrics)}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    for rule_file in prometheus["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    mounts = _compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in mounts


def test_alert_rules_are_complete() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for name in (
        "RelayUpstreamDown",
        "RelaySpoolGrowing",
        "RelaySpoolOldestTooOld",
        "RelayQuotaNearlyExhausted",
        "RelaySpikeProtectionActive",
        "RelayRedisErrors",
        "RelayHigh5xx",
    ):
        assert name in alerts
    for rule in alerts.values():
        assert rule["expr"].strip()
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


# --- Dockerfile ------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    steps = _instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2
    assert any(" AS build" in f for f in froms)
    final = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    tail = steps[final:]
    users = [rest for word, rest in tail if word == "USER"]
    assert users, "the final stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    (health,) = [rest for word, rest in tail if word == "HEALTHCHECK"]
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    exposed = [rest for word, rest in tail if word == "EXPOSE"]
    assert str(Config().listen.port) in " ".join(exposed)
    env = " ".join(rest for word, rest in tail if word == "ENV")
    assert "RELAY_LISTEN_HOST=0.0.0.0" in env
    assert any(word == "VOLUME" and "/var/lib/relay/data" in rest for word, rest in tail)
    runs = " ".join(rest for word, rest in tail if word == "RUN")
    assert "venv" in runs and "--no-index" in runs
    build_runs = " ".join(rest for word, rest in steps[:final] if word == "RUN")
    assert "--constraint requirements.lock" in build_runs
    entry = [rest for word, rest in tail if word in ("ENTRYPOINT", "CMD")]
    assert entry == ['["relay"]', '["run"]']


def test_requirements_lock_pins_every_runtime_dependency() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _pins(ROOT / "requirements.lock")
    for dep in pyproject["project"]["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]
        assert _canonical(name) in pins, name
    text = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".git" in text and ".venv" in text
    assert "requirements.lock" not in text and "relay" not in text


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, line
            pins[_canonical(name)] = version
    return pins


def test_test_lock_pins_the_test_tools_and_bootstrap_installs_with_both_locks() -> None:
    runtime = _pins(ROOT / "requirements.lock")
    tools = _pins(ROOT / "requirements-test.lock")
    assert not runtime.keys() & tools.keys()  # one version per package, in one file
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for dep in pyproject["project"]["optional-dependencies"]["test"]:
        name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]
        assert _canonical(name) in tools, name
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    installs = [line for line in bootstrap.splitlines() if "pip install" in line and "-e " in line]
    assert installs and all("--constraint requirements-test.lock" in line for line in installs)
    plain = [
        line for line in bootstrap.splitlines() if "pip install" in line and "upgrade" not in line
    ]
    assert len(plain) == 2 and all("--constraint requirements.lock" in line for line in plain)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: p.name)
def test_every_yaml_file_parses(path: Path) -> None:
    assert list(yaml.safe_load_all(path.read_text()))
