"""Static checks of the deployment files under deploy/ (no Docker, no Kubernetes).

The compose stack, the Kubernetes manifests, the Dockerfile and redis.conf cannot be run
here, so these tests prove what can be proved from the files: they parse, every path they
mount exists, every image is pinned, the replica counts and probes match the service's
contract, every ``PENNY_*`` variable is one the package reads, secrets only travel as
files, and the monitoring wiring (Prometheus rules, Grafana provisioning, ServiceMonitors,
the generated PrometheusRule) agrees with the files the other tests check.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from penny_cache import settings_env
from tests.conftest import unavailable
from tests.integration.test_prometheus_rules import RULE_FILES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE_PATH = DEPLOY / "compose" / "compose.yaml"
COMPOSE_DIR = COMPOSE_PATH.parent
REDIS_CONF = DEPLOY / "redis" / "redis.conf"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
K8S = DEPLOY / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
PROMETHEUSRULE = K8S / "prometheusrule.yaml"
RENDERER = K8S / "render_prometheusrule.py"
GRAFANA = ROOT / "grafana"
GRAFANA_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "penny-cache.yml"
GRAFANA_DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVISIONING_TARGET = "/etc/grafana/provisioning"  # Grafana's default paths.provisioning

SERVICE_PORT = 8000
EXPORTER_PORT = 9464
EXPORTER_JOB = "penny-cache-exporter"  # the job PennyCacheExporterDown watches
VOLATILE_POLICIES = frozenset({"volatile-lru", "volatile-lfu", "volatile-ttl"})
SECRET_SETTINGS = frozenset({"PENNY_DATABASE_URL", "PENNY_REDIS_PASSWORD"})
KNOWN_ENV_NAMES = frozenset(settings_env.ENV_NAMES.values())
PENNY_NAME = re.compile(r"\bPENNY_[A-Z0-9_]+\b")
# A full release: major.minor.patch; PostgreSQL (since 10) numbers releases major.minor.
VERSION_TAG = re.compile(r"\d+\.\d+\.\d+")
TWO_PART_VERSION_TAG = re.compile(r"\d+\.\d+")
TWO_PART_VERSIONED = frozenset({"postgres"})
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
SIZE = re.compile(r"(\d+)\s*([kmg]?)(i?b?)", re.IGNORECASE)
SIZE_FACTORS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")], key=str)
DEPLOY_FILES = sorted(
    path for path in DEPLOY.rglob("*") if path.is_file() and "__pycache__" not in path.parts
)


# --- loading -------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def _load_all(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert all(isinstance(doc, dict) for doc in docs), path
    return docs


def _k8s_docs() -> list[dict[str, Any]]:
    """Every Kubernetes object of the kustomization's manifests."""
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path != KUSTOMIZATION
        for doc in _load_all(path)
    ]


def _load_renderer() -> ModuleType:
    """deploy/k8s/render_prometheusrule.py as a module, leaving no __pycache__ in deploy/."""
    spec = importlib.util.spec_from_file_location("render_prometheusrule", RENDERER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    dont_write_bytecode = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
    return module


COMPOSE = _load(COMPOSE_PATH)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
K8S_DOCS = _k8s_docs()


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- compose helpers -----------------------------------------------------------------------


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _flag(args: list[str], name: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` in an argument list."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _services_running(subcommand: str) -> dict[str, dict[str, Any]]:
    """Compose services whose command is ``penny-cache <subcommand> ...``."""
    return {
        name: service for name, service in SERVICES.items() if _command(service)[:1] == [subcommand]
    }


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {key: value for key, _, value in pairs}
    return {str(key): str(value) for key, value in environment.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container target -> source (host path relative to compose.yaml, or volume name)."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def _is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _host_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container target -> host path, for bind mounts only."""
    return {
        target: (COMPOSE_DIR / source).resolve()
        for target, source in _mounts(service).items()
        if _is_host_path(source)
    }


def _container_to_host(service: dict[str, Any], container_path: PurePosixPath) -> Path:
    """The host file a bind mount puts at ``container_path`` (longest matching target)."""
    for target, host in sorted(_host_mounts(service).items(), key=lambda m: -len(m[0])):
        if container_path == PurePosixPath(target) or container_path.is_relative_to(target):
            return host / container_path.relative_to(target)
    raise AssertionError(f"{container_path} is not bind-mounted")


def _compose_host_paths() -> list[tuple[str, Path]]:
    """(where, host path) of everything compose.yaml reads from the repository."""
    paths: list[tuple[str, Path]] = []
    for name, service in SERVICES.items():
        build = service.get("build")
        if isinstance(build, str):
            build = {"context": build}
        if isinstance(build, dict):
            context = COMPOSE_DIR / build.get("context", ".")
            paths.append((f"{name}: build context", context))
            paths.append((f"{name}: dockerfile", context / build.get("dockerfile", "Dockerfile")))
        for target, host in _host_mounts(service).items():
            paths.append((f"{name}: {target}", host))
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            paths.append((f"{name}: env_file", COMPOSE_DIR / env_file))
    for section in ("secrets", "configs"):
        for name, item in (COMPOSE.get(section) or {}).items():
            if "file" in item:
                paths.append((f"{section}.{name}", COMPOSE_DIR / item["file"]))
    return paths


def _compose_service_using(image_prefix: str) -> dict[str, Any]:
    (service,) = [s for s in SERVICES.values() if str(s.get("image", "")).startswith(image_prefix)]
    return service


# --- k8s helpers ---------------------------------------------------------------------------


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in K8S_DOCS if doc["kind"] == kind]


def _pod_templates() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) of every object that has one."""
    for doc in K8S_DOCS:
        template = doc.get("spec", {}).get("template")
        if template is not None:
            yield doc, template


def _containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    containers: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    return containers


def _deployment_running(subcommand: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one Deployment and its container whose args are ``<subcommand> ...``."""
    found = [
        (doc, container)
        for doc in _of_kind("Deployment")
        for container in doc["spec"]["template"]["spec"]["containers"]
        if container.get("args", [])[:1] == [subcommand]
    ]
    assert len(found) == 1, f"{len(found)} Deployments run `penny-cache {subcommand}`"
    return found[0]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert isinstance(number, int)
    return number


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# --- images --------------------------------------------------------------------------------


def _is_pinned(image: str) -> bool:
    """An image is pinned by a sha256 digest, or by a tag naming one release (not latest, not
    a floating major or minor version)."""
    if DIGEST.search(image):
        return True
    name, _, tag = image.rsplit("/", 1)[-1].partition(":")
    version = TWO_PART_VERSION_TAG if name in TWO_PART_VERSIONED else VERSION_TAG
    return bool(tag) and tag != "latest" and version.match(tag.removeprefix("v")) is not None


def _dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return lines


def _dockerfile_instructions(keyword: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in _dockerfile_lines()
        if line.split(None, 1)[0].upper() == keyword
    ]


def _dockerfile_images() -> list[str]:
    """The base images of every FROM, with global ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    for line in _dockerfile_lines():
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "ARG" and not images and "=" in rest:
            name, _, default = rest.strip().partition("=")
            args[name] = default.strip("\"'")
        elif keyword.upper() == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--")]
            image = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], tokens[0]
            )
            if len(tokens) >= 3 and tokens[1].lower() == "as":
                stages.add(tokens[2])
            if image not in stages:
                images.append(image)
    return images


def _all_images() -> list[tuple[str, str]]:
    """(where, image) for every image compose, Kubernetes and the Dockerfile use."""
    images = [(f"compose {name}", str(s["image"])) for name, s in SERVICES.items() if "image" in s]
    images += [(f"Dockerfile FROM {i}", image) for i, image in enumerate(_dockerfile_images())]
    for doc, template in _pod_templates():
        for container in _containers(template):
            images.append((f"{doc['kind']} {doc['metadata']['name']}", container["image"]))
    for entry in _load(KUSTOMIZATION).get("images", []):
        images.append((f"kustomization {entry['name']}", f"{entry['name']}:{entry['newTag']}"))
    return images


# --- env names -----------------------------------------------------------------------------


def _setting_name(variable: str) -> str:
    """PENNY_X for PENNY_X and PENNY_X_FILE."""
    return variable.removesuffix("_FILE")


def _structured_env_names() -> list[tuple[str, str]]:
    """(where, name) of every environment variable compose and the manifests set."""
    names = [
        (f"compose {service}", name)
        for service, spec in SERVICES.items()
        for name in _environment(spec)
    ]
    for doc in _of_kind("ConfigMap"):
        names += [(f"ConfigMap {doc['metadata']['name']}", key) for key in doc.get("data", {})]
    for doc, template in _pod_templates():
        for container in _containers(template):
            names += [
                (f"{doc['metadata']['name']}", env["name"]) for env in container.get("env", [])
            ]
    return names


# --- sizes ---------------------------------------------------------------------------------


def _bytes(text: str) -> int:
    """``256mb``, ``384M``, ``512Mi`` as bytes."""
    match = SIZE.fullmatch(text.strip())
    assert match, text
    return int(match.group(1)) * SIZE_FACTORS[match.group(2).lower()]


def _redis_directives() -> dict[str, list[str]]:
    """redis.conf's directives: name -> arguments of its last occurrence."""
    directives: dict[str, list[str]] = {}
    for line in REDIS_CONF.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, *arguments = shlex.split(line)
            directives[name.lower()] = arguments
    return directives


# === tests =================================================================================


@pytest.mark.parametrize("path", YAML_FILES, ids=_relative)
def test_every_yaml_file_loads(path: Path) -> None:
    """Every YAML file under deploy/ parses (all documents of multi-document manifests), and
    each document is a mapping."""
    assert _load_all(path), f"{_relative(path)} is empty"


def test_the_yaml_files_include_compose_and_k8s() -> None:
    """The YAML sweep above really covers the compose file and every Kubernetes manifest."""
    assert COMPOSE_PATH in YAML_FILES
    assert set(K8S.glob("*.yaml")) <= set(YAML_FILES)
    assert len(K8S_DOCS) >= 9


def test_every_compose_host_path_exists_in_the_repository() -> None:
    """Every file or directory compose.yaml reads (build context, Dockerfile, bind mounts,
    secret files) exists and lies inside this repository."""
    paths = _compose_host_paths()
    assert len(paths) >= 10
    for where, path in paths:
        resolved = path.resolve()
        assert resolved.exists(), f"{where}: {path} does not exist"
        assert resolved.is_relative_to(ROOT), f"{where}: {path} is outside the repository"


def test_image_pin_check_is_sound() -> None:
    """The pin check accepts full release tags and digests and refuses bare names, latest,
    floating major/minor versions and named tags, including behind a registry with a port."""
    for good in (
        "redis:7.4.2",
        "registry.example.com:5000/penny/penny-cache:0.1.0",
        "python:3.11.11-slim-bookworm",
        "prom/prometheus:v3.1.0",
        "postgres:16.6-bookworm",
        f"redis@sha256:{'a' * 64}",
    ):
        assert _is_pinned(good), good
    for bad in (
        "redis",
        "redis:latest",
        "redis:7",
        "redis:7.4",
        "redis:alpine",
        "python:3.11-slim",
        "postgres:16",
        "localhost:5000/redis",
        "penny-cache:latest-1.2.3",
    ):
        assert not _is_pinned(bad), bad


def test_every_image_is_pinned() -> None:
    """Every image in compose, in the Kubernetes pod templates, in the kustomization and in
    the Dockerfile's FROM lines is pinned to an explicit version tag or a digest."""
    images = _all_images()
    assert len(images) >= 10
    for where, image in images:
        assert _is_pinned(image), f"{where}: {image!r} is not pinned"


def test_every_compose_service_names_its_image() -> None:
    """Every compose service has an image, so services built from the Dockerfile get a
    versioned tag instead of an anonymous one."""
    for name, service in SERVICES.items():
        assert "image" in service, name


def test_compose_runs_two_service_replicas_and_one_exporter() -> None:
    """Compose runs the HTTP service with at least 2 replicas and ``penny-cache exporter`` in
    exactly one service with exactly one replica (one exporter per namespace)."""
    (service,) = _services_running("serve").values()
    (exporter,) = _services_running("exporter").values()
    assert service["deploy"]["replicas"] >= 2
    assert exporter.get("deploy", {}).get("replicas", 1) == 1
    assert "container_name" not in service, "a fixed container name forbids replicas"


def test_compose_service_and_exporter_share_redis_settings() -> None:
    """The service and the exporter read the same Redis and namespace, or the exporter would
    report another namespace's counters."""
    (service,) = _services_running("serve").values()
    (exporter,) = _services_running("exporter").values()
    shared = ("PENNY_REDIS_URL", "PENNY_NAMESPACE", "PENNY_REDIS_PASSWORD_FILE")
    for name in shared:
        assert _environment(service)[name] == _environment(exporter)[name], name


def test_compose_healthy_dependencies_have_health_checks() -> None:
    """Every ``depends_on`` with ``condition: service_healthy`` waits for a service that has a
    health check: its own in compose, or the image's HEALTHCHECK for services built from
    deploy/Dockerfile."""
    dockerfile_has_healthcheck = bool(_dockerfile_instructions("HEALTHCHECK"))
    waited = 0
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, condition in depends_on.items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            assert "condition" in condition, f"{name} -> {dependency}"
            if condition["condition"] != "service_healthy":
                continue
            waited += 1
            target = SERVICES[dependency]
            built = "build" in target
            assert "healthcheck" in target or (built and dockerfile_has_healthcheck), dependency
    assert waited >= 4


def test_compose_secrets_are_files_named_by_file_variables() -> None:
    """Every ``*_FILE`` variable pointing into /run/secrets names a secret that the service
    mounts and that compose defines; the settings that are secrets never appear as plain
    values."""
    defined = set(COMPOSE["secrets"])
    checked = 0
    for name, service in SERVICES.items():
        environment = _environment(service)
        mounted = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        assert mounted <= defined, name
        for variable, value in environment.items():
            assert variable not in SECRET_SETTINGS, f"{name}: {variable} as a plain value"
            if variable.endswith("_FILE") and value.startswith("/run/secrets/"):
                secret = PurePosixPath(value).relative_to("/run/secrets").parts[0]
                assert secret in mounted, f"{name}: {variable} names unmounted {secret}"
                checked += 1
    assert checked >= 6


def test_compose_secret_examples_are_consistent() -> None:
    """The dev-only secret files say so, agree with each other (same PostgreSQL password in
    the URL and for the server; redis_exporter's JSON password map is keyed by its
    REDIS_ADDR and holds the Redis password), and have no trailing newline."""
    files = {name: COMPOSE_DIR / item["file"] for name, item in COMPOSE["secrets"].items()}
    values = {name: path.read_text(encoding="utf-8") for name, path in files.items()}
    for name, value in values.items():
        assert "dev-only" in value, name
        if files[name].suffix != ".json":
            assert value == value.strip(), f"{name} has surrounding whitespace"
    url = urlsplit(values["database_url"])
    assert url.password == values["postgres_password"]
    assert url.hostname in SERVICES
    exporter_env = _environment(SERVICES["redis-exporter"])
    password_map = json.loads(values["redis_exporter_passwords"])
    assert password_map == {exporter_env["REDIS_ADDR"]: values["redis_password"]}
    assert (COMPOSE_DIR / "secrets" / "README.md").is_file()


def test_k8s_exporter_deployment_is_a_singleton() -> None:
    """The Kubernetes exporter Deployment has exactly 1 replica and the Recreate strategy,
    so even a rollout never runs two exporters of one namespace."""
    deployment, _ = _deployment_running("exporter")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_service_deployment_probes_the_contract_endpoints() -> None:
    """The service Deployment has 2+ replicas, a liveness probe on /healthz and a readiness
    probe on /readyz (and a startup probe, if any, on /healthz), all on the container port the
    server listens on (``--port``)."""
    deployment, container = _deployment_running("serve")
    assert deployment["spec"]["replicas"] >= 2
    listen = int(_flag(container["args"], "--port") or 0)
    assert listen == SERVICE_PORT
    assert listen in [p["containerPort"] for p in container["ports"]]
    probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    assert {"livenessProbe", "readinessProbe"} <= container.keys()
    for probe, path in probes.items():
        if probe not in container:
            continue
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert _port_number(container, http_get["port"]) == listen, probe


def test_k8s_exporter_probes_its_listening_port() -> None:
    """The exporter's probes target the port ``penny-cache exporter --port`` listens on."""
    _, container = _deployment_running("exporter")
    listen = int(_flag(container["args"], "--port") or 0)
    assert listen == EXPORTER_PORT
    for probe in ("livenessProbe", "readinessProbe"):
        assert _port_number(container, container[probe]["httpGet"]["port"]) == listen


def test_k8s_pods_run_as_the_images_non_root_user() -> None:
    """Every pod runs as non-root with the Dockerfile's numeric USER, without privilege
    escalation, on a read-only root filesystem, and declares resources."""
    (user,) = _dockerfile_instructions("USER")
    uid = int(user.split(":")[0])
    assert uid != 0
    for doc, template in _pod_templates():
        security = template["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert security["runAsUser"] == uid, doc["metadata"]["name"]
        for container in _containers(template):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert container["resources"]["requests"], container["name"]
            assert container["resources"]["limits"]["memory"], container["name"]


def test_k8s_service_multiproc_dir_is_an_empty_dir() -> None:
    """The service's PROMETHEUS_MULTIPROC_DIR is the mount path of an emptyDir volume, so the
    workers' metric files are per pod and writable under a read-only root filesystem."""
    deployment, container = _deployment_running("serve")
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]]
    assert "emptyDir" in volume


def test_k8s_secret_files_are_mounted_from_the_secret() -> None:
    """Every ``*_FILE`` variable of a pod names a file mounted from a Secret volume, whose key
    the Secret defines; settings that are secrets never come as plain values or from the
    ConfigMap."""
    secrets = {doc["metadata"]["name"]: doc for doc in _of_kind("Secret")}
    checked = 0
    for doc, template in _pod_templates():
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in _containers(template):
            for env in container.get("env", []):
                assert env["name"] not in SECRET_SETTINGS, f"{env['name']} as a plain value"
                if not env["name"].endswith("_FILE"):
                    continue
                path = PurePosixPath(env["value"])
                (mount,) = [
                    m
                    for m in container["volumeMounts"]
                    if path.parent == PurePosixPath(m["mountPath"])
                ]
                secret_volume = volumes[mount["name"]]["secret"]
                secret = secrets[secret_volume["secretName"]]
                keys = {i["key"]: i["path"] for i in secret_volume.get("items", [])} or {
                    key: key for key in secret.get("stringData", {}) | secret.get("data", {})
                }
                assert path.name in keys.values(), f"{doc['metadata']['name']}: {path}"
                checked += 1
    assert checked >= 3
    for doc in _of_kind("ConfigMap"):
        assert not set(doc.get("data", {})) & SECRET_SETTINGS


def test_k8s_services_select_pods_and_named_ports() -> None:
    """Each Service selects the pods of exactly one Deployment and targets a port that the
    container declares."""
    for service in _of_kind("Service"):
        selector = service["spec"]["selector"]
        selected = [
            (doc, template)
            for doc, template in _pod_templates()
            if _matches(selector, template["metadata"]["labels"])
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        (container,) = selected[0][1]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            _port_number(container, port["targetPort"])


def test_servicemonitors_scrape_both_services_under_the_alerted_job_names() -> None:
    """The ServiceMonitors scrape a named port of the service's and of the exporter's Service;
    the exporter's job label (its Service's name) is the job the alert rules watch."""
    services = _of_kind("Service")
    scraped: set[str] = set()
    for monitor in _of_kind("ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if _matches(selector, s["metadata"]["labels"])]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint.get("path", "/metrics") == "/metrics"
        scraped.add(service["metadata"]["name"])
    assert scraped == {s["metadata"]["name"] for s in services}
    alerts = " ".join(str(rule["expr"]) for path in RULE_FILES for rule in _rules(path))
    assert f'job="{EXPORTER_JOB}"' in alerts
    assert EXPORTER_JOB in scraped


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(path)["groups"] for rule in group["rules"]]


def test_structured_penny_env_names_are_known() -> None:
    """Every PENNY_* variable that compose or a manifest sets (environment, ConfigMap data,
    container env) is a setting penny_cache reads, directly or as its ``_FILE`` form."""
    names = [(where, name) for where, name in _structured_env_names() if name.startswith("PENNY_")]
    assert len(names) >= 10
    for where, name in names:
        assert _setting_name(name) in KNOWN_ENV_NAMES, f"{where}: unknown {name}"


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=_relative)
def test_every_penny_name_mentioned_under_deploy_is_known(path: Path) -> None:
    """No file under deploy/ (comments and READMEs included) mentions a PENNY_* variable the
    package does not read, so commented-out examples cannot rot either."""
    text = path.read_text(encoding="utf-8", errors="replace")
    for name in PENNY_NAME.findall(text):
        assert _setting_name(name) in KNOWN_ENV_NAMES, f"{_relative(path)}: unknown {name}"


def test_compose_prometheus_loads_exactly_the_tested_rule_files() -> None:
    """The Prometheus that compose runs reads a config (via its bind mount) whose rule_files
    resolve, inside the container, to bind mounts of exactly the rule files that
    tests/integration/test_prometheus_rules.py checks; resolved next to the config on the
    host they are the same files, so ``promtool check config`` sees what the container sees."""
    prometheus = _compose_service_using("prom/prometheus:")
    config_path = PurePosixPath(_flag(_command(prometheus), "--config.file") or "")
    host_config = _container_to_host(prometheus, config_path)
    rule_files = _load(host_config)["rule_files"]
    in_container = {
        _container_to_host(prometheus, config_path.parent / name).resolve() for name in rule_files
    }
    on_host = {(host_config.parent / name).resolve() for name in rule_files}
    expected = {path.resolve() for path in RULE_FILES}
    assert in_container == expected
    assert on_host == expected


def test_compose_prometheus_targets_are_compose_services() -> None:
    """The compose Prometheus scrapes the same jobs as deploy/prometheus/prometheus.yml, and
    every target (static or DNS-discovered) is a compose service, on the port that service's
    ``--port`` says when it has one."""
    prometheus = _compose_service_using("prom/prometheus:")
    config_path = PurePosixPath(_flag(_command(prometheus), "--config.file") or "")
    scrape_configs = _load(_container_to_host(prometheus, config_path))["scrape_configs"]
    reference = _load(PROMETHEUS_CONFIG)["scrape_configs"]
    assert {j["job_name"] for j in scrape_configs} == {j["job_name"] for j in reference}
    targets: list[tuple[str, int]] = []
    for job in scrape_configs:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                targets.append((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            targets += [(name, int(dns["port"])) for name in dns["names"]]
    assert len(targets) >= 3
    for host, port in targets:
        assert host in SERVICES, f"{host} is not a compose service"
        listen = _flag(_command(SERVICES[host]), "--port")
        assert listen is None or int(listen) == port, (host, port)


def test_compose_prometheus_config_passes_promtool() -> None:
    """``promtool check config`` accepts the config compose mounts, and the rules it loads."""
    prometheus = _compose_service_using("prom/prometheus:")
    config_path = PurePosixPath(_flag(_command(prometheus), "--config.file") or "")
    host_config = _container_to_host(prometheus, config_path)
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
        return
    result = subprocess.run(
        [promtool, "check", "config", str(host_config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_mounts_match_the_provisioning_files() -> None:
    """Compose mounts grafana/provisioning where Grafana reads provisioning, and
    grafana/dashboards at the provider's ``options.path``; the datasource URL names the
    compose Prometheus service on Prometheus' port."""
    grafana = _compose_service_using("grafana/grafana:")
    mounts = _host_mounts(grafana)
    assert "GF_PATHS_PROVISIONING" not in _environment(grafana)
    assert mounts[GRAFANA_PROVISIONING_TARGET] == (GRAFANA / "provisioning").resolve()
    (provider,) = _load(GRAFANA_PROVIDERS)["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == (GRAFANA / "dashboards").resolve()
    assert list(dashboards.glob("*.json"))
    (datasource,) = _load(GRAFANA_DATASOURCES)["datasources"]
    url = urlsplit(datasource["url"])
    assert url.hostname in SERVICES
    assert str(SERVICES[url.hostname]["image"]).startswith("prom/prometheus:")
    assert url.port == 9090


def test_redis_conf_evicts_only_keys_with_a_ttl() -> None:
    """redis.conf sets a maxmemory below the compose container's memory limit and a
    volatile-* policy, so the counters hash and the invalidation sequence keys (no TTL) are
    never evicted; compose mounts it read-only and starts Redis with it."""
    directives = _redis_directives()
    (policy,) = directives["maxmemory-policy"]
    assert policy in VOLATILE_POLICIES
    (maxmemory,) = directives["maxmemory"]
    assert _bytes(maxmemory) > 0
    redis = _compose_service_using("redis:")
    limit = redis["deploy"]["resources"]["limits"]["memory"]
    assert _bytes(maxmemory) <= 0.8 * _bytes(limit)
    (target,) = [t for t, host in _host_mounts(redis).items() if host == REDIS_CONF.resolve()]
    assert any(volume.endswith(f"{target}:ro") for volume in redis["volumes"])
    assert target in " ".join(_command(redis))


def test_redis_size_parser_is_sound() -> None:
    """The size parser reads Redis and compose/Kubernetes units alike."""
    assert _bytes("256mb") == 256 * 1024**2
    assert _bytes("384M") == 384 * 1024**2
    assert _bytes("512Mi") == 512 * 1024**2
    assert _bytes("1gb") == 1024**3
    assert _bytes("100") == 100


def test_prometheusrule_is_the_rendered_rule_files() -> None:
    """The committed PrometheusRule is byte for byte what render_prometheusrule.py renders,
    its spec.groups are the groups of exactly the rule files promtool tests, unchanged."""
    renderer = _load_renderer()
    rendered: str = renderer.render()
    assert PROMETHEUSRULE.read_text(encoding="utf-8") == rendered, (
        "deploy/k8s/prometheusrule.yaml is stale: run python deploy/k8s/render_prometheusrule.py"
    )
    sources: list[Path] = renderer.rule_files()
    assert {p.resolve() for p in sources} == {p.resolve() for p in RULE_FILES}
    (manifest,) = _load_all(PROMETHEUSRULE)
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    expected = [group for path in sources for group in _load(path)["groups"]]
    assert manifest["spec"]["groups"] == expected


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml lists every manifest in deploy/k8s (and nothing else), and its image
    override names the image the Deployments use."""
    kustomization = _load(KUSTOMIZATION)
    manifests = {p.name for p in K8S.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert set(kustomization["resources"]) == manifests
    assert len(kustomization["resources"]) == len(manifests)
    used = {
        container["image"].rsplit(":", 1)[0]
        for _, template in _pod_templates()
        for container in _containers(template)
    }
    assert {entry["name"] for entry in kustomization["images"]} == used


def test_dockerfile_contract() -> None:
    """The Dockerfile runs as a numeric non-root user, exposes 8000 and 9464, checks health
    with Python's urllib on /healthz (the slim image has no curl), and its build context
    filter admits everything it copies from the repository."""
    (user,) = _dockerfile_instructions("USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user)
    exposed = {int(p) for line in _dockerfile_instructions("EXPOSE") for p in line.split()}
    assert exposed == {SERVICE_PORT, EXPORTER_PORT}
    (healthcheck,) = _dockerfile_instructions("HEALTHCHECK")
    assert "urllib" in healthcheck
    assert f"127.0.0.1:{SERVICE_PORT}/healthz" in healthcheck
    assert "curl" not in healthcheck
    assert any(".[service]" in run for run in _dockerfile_instructions("RUN"))
    allowed = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    for copy in _dockerfile_instructions("COPY"):
        if copy.startswith("--from"):
            continue
        for source in copy.split()[:-1]:
            assert f"!{source.rstrip('/')}" in {a.rstrip("/") for a in allowed}, source
            assert (ROOT / source).exists(), source
