"""deploy/ keeps its promises, checked without a cluster, a Docker engine or Grafana.

The Kubernetes manifests, the Prometheus configuration and the Grafana dashboard are read
and held against the code they configure, the way tests/unit/test_compose.py holds the
compose file: every `pipeline` command line goes through the real argument parser and
settings loader; the probes hit the port the worker serves them on, at paths its endpoint
answers; KEDA watches the group and topic the worker consumes, and never asks for more
workers than the topic has partitions; every metric a dashboard panel or the Prometheus
configuration names is one the exporter writes. `promtool` (Debian's prometheus package)
checks the Prometheus file and the syntax of every dashboard expression where it is
installed; `kubectl kustomize` builds the manifests where kubectl is. What these tests
cannot show is that the images pull or that a cluster accepts the objects.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from pipeline.config import ServeConfig, WorkerConfig, load_settings
from pipeline.engine.models import ModelStore
from pipeline.flags import setting_flags
from pipeline.kafka import committer, transactions, worker
from pipeline.metrics.endpoint import MetricsServer
from pipeline.metrics.health import Readiness
from pipeline.metrics.prometheus import METRICS, PrometheusSensor
from pipeline.serve import httpapp, server
from tests.unit.test_compose import _environment, _run_config, parse_or_fail

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
KUSTOMIZATION: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
PROMETHEUS_FILE = DEPLOY / "prometheus" / "prometheus.yml"
PROMETHEUS: dict[str, Any] = yaml.safe_load(PROMETHEUS_FILE.read_text())
GRAFANA = DEPLOY / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES: list[dict[str, Any]] = [
    source
    for path in sorted((GRAFANA / "provisioning" / "datasources").glob("*.yml"))
    for source in yaml.safe_load(path.read_text())["datasources"]
]
COMPOSE: dict[str, dict[str, Any]] = yaml.safe_load((REPO / "docker-compose.yml").read_text())[
    "services"
]
PREFIX = "pipeline_"
# Grafana's own variables; the dashboard's are in its templating list.
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
# Labels Prometheus adds to every series it scrapes; `le` is every histogram bucket's.
SCRAPE_LABELS = {"instance", "job"}


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


OBJECTS = [doc for name in KUSTOMIZATION["resources"] for doc in _documents(name)]
DEPLOYMENTS = {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "Deployment"}
(SCALED,) = [o for o in OBJECTS if o["kind"] == "ScaledObject"]


def _container(deployment: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _subcommand(name: str) -> str:
    return str(_container(DEPLOYMENTS[name])["args"][0])


WORKER = next(name for name in DEPLOYMENTS if _subcommand(name) == "run")
SERVE = next(name for name in DEPLOYMENTS if _subcommand(name) == "serve")


def _config_source(deployment: Mapping[str, Any], path: Path) -> Path:
    """The file in this directory that the container sees at `path` (a ConfigMap mount)."""
    pod = deployment["spec"]["template"]["spec"]
    for mount in _container(deployment).get("volumeMounts", []):
        if PurePosixPath(mount["mountPath"]) != PurePosixPath(path).parent:
            continue
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        generated = {g["name"]: g["files"] for g in KUSTOMIZATION["configMapGenerator"]}
        files = generated[volume["configMap"]["name"]]
        assert path.name in files, f"{path} is not in the ConfigMap's files {files}"
        return K8S / path.name
    pytest.fail(f"{deployment['metadata']['name']} reads {path}, which no volume mounts")


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def _settings(name: str) -> WorkerConfig | ServeConfig:
    """The settings the container of Deployment `name` starts with, or fail saying why."""
    container = _container(DEPLOYMENTS[name])
    args = parse_or_fail([str(a) for a in container["args"]], f"Deployment {name!r}")
    config_file = _config_source(DEPLOYMENTS[name], args.config) if args.config else None
    cls = WorkerConfig if args.command == "run" else ServeConfig
    return load_settings(
        cls,
        setting_flags(args),
        config_file=config_file,
        env=_env(container),
        properties=getattr(args, "X", None) or (),
    )  # as settings_from_args


def _worker_settings() -> WorkerConfig:
    settings = _settings(WORKER)
    assert isinstance(settings, WorkerConfig)
    return settings


def _port(container: Mapping[str, Any], port: int | str) -> int:
    """A container port, by number or by name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def _probes(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    return {kind: container[kind]["httpGet"] for kind in kinds if kind in container}


@contextlib.contextmanager
def _metrics_endpoint() -> Iterator[str]:
    """The worker's real metrics endpoint, on a free loopback port."""
    endpoint = MetricsServer("127.0.0.1", 0, PrometheusSensor(), Readiness())
    endpoint.start()
    try:
        yield f"http://127.0.0.1:{endpoint.port}"
    finally:
        endpoint.stop()


# -- Kubernetes --------------------------------------------------------------------------


def test_the_kustomization_names_files_that_exist() -> None:
    names = [*KUSTOMIZATION["resources"], "podmonitor.yaml"]
    names += [f for g in KUSTOMIZATION["configMapGenerator"] for f in g["files"]]
    missing = [name for name in names if not (K8S / name).is_file()]
    assert not missing, f"missing in {K8S}: {missing}"
    assert {WORKER, SERVE} == set(DEPLOYMENTS)


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_containers_run_the_pipeline_entrypoint_with_accepted_arguments(name: str) -> None:
    container = _container(DEPLOYMENTS[name])
    assert "command" not in container, "the image's ENTRYPOINT is `pipeline`: set args only"
    _settings(name)  # parses, and loads the settings, or fails saying why


def test_the_worker_serves_an_existing_model_from_one_process() -> None:
    config = _worker_settings()
    assert config.default_model, "events that name no model would be dead-lettered"
    ModelStore(REPO / "models").latest(config.default_model)  # the image copies models/
    assert config.workers == 1, "one process per pod: KEDA scales pods, and probes see one"
    assert config.group_type == "consumer"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_probes_hit_the_port_and_paths_that_serve_them(name: str) -> None:
    container, settings = _container(DEPLOYMENTS[name]), _settings(name)
    if isinstance(settings, WorkerConfig):
        served, host = settings.metrics_port, settings.metrics_host
    else:
        served, host = settings.http_port, settings.host
    assert host == "0.0.0.0", f"{name} listens on {host}: the kubelet could not reach it"
    probes = _probes(container)
    assert set(probes) == {"startupProbe", "livenessProbe", "readinessProbe"}, set(probes)
    for kind, probe in probes.items():
        assert _port(container, probe["port"]) == served, f"{name}: {kind} on another port"
        wanted = "/readyz" if kind == "readinessProbe" else "/healthz"
        assert probe["path"] == wanted, f"{name}: {kind} asks {probe['path']}"


def test_the_probe_paths_are_answered_by_the_worker_endpoint_and_the_doors() -> None:
    paths = {
        p["path"] for name in DEPLOYMENTS for p in _probes(_container(DEPLOYMENTS[name])).values()
    }
    with _metrics_endpoint() as url:
        for path in [*paths, "/metrics"]:
            assert httpx.get(url + path, timeout=5).status_code in (200, 503), path
    assert paths | {"/metrics"} <= httpapp._HEALTH


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_scrape_annotations_name_the_metrics_port(name: str) -> None:
    template = DEPLOYMENTS[name]["spec"]["template"]
    notes, container = template["metadata"]["annotations"], _container(DEPLOYMENTS[name])
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/path"] == "/metrics"
    probe_port = _port(container, _probes(container)["livenessProbe"]["port"])
    assert int(notes["prometheus.io/port"]) == probe_port


def test_the_podmonitor_scrapes_named_ports_of_the_pods_it_selects() -> None:
    (monitor,) = _documents("podmonitor.yaml")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    ports: set[str] = set()
    for deployment in DEPLOYMENTS.values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if wanted.items() <= labels.items():
            ports |= {p["name"] for p in _container(deployment)["ports"]}
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert endpoints and {e["port"] for e in endpoints} <= ports, ports
    assert {e["path"] for e in endpoints} == {"/metrics"}


def test_grace_periods_cover_the_shutdown_bounds() -> None:
    bound = committer.DRAIN_TIMEOUT_S + transactions.STEP_TIMEOUT_S + worker._CLOSE_TIMEOUT_S
    grace = DEPLOYMENTS[WORKER]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert bound < grace <= bound + 10, f"{grace} s for a shutdown of at most {bound} s"
    grace = DEPLOYMENTS[SERVE]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert server._GRACE_S < grace <= server._GRACE_S + 10


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_pods_run_as_the_images_user_with_memory_bounded(name: str) -> None:
    user = next(
        line.split()[1]
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    )
    pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    resources = _container(DEPLOYMENTS[name])["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]


def test_the_service_sends_to_the_doors_named_ports() -> None:
    (service,) = [o for o in OBJECTS if o["kind"] == "Service"]
    pod = DEPLOYMENTS[SERVE]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    settings = _settings(SERVE)
    assert isinstance(settings, ServeConfig)
    named = {p["name"]: p["containerPort"] for p in _container(DEPLOYMENTS[SERVE])["ports"]}
    targets = {named[p["targetPort"]] for p in service["spec"]["ports"]}
    assert targets == {settings.http_port, settings.grpc_port}


def test_keda_scales_the_worker_on_its_own_group_and_topic() -> None:
    config, spec = _worker_settings(), SCALED["spec"]
    assert SCALED["apiVersion"] == "keda.sh/v1alpha1"
    assert spec["scaleTargetRef"]["name"] == WORKER
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["bootstrapServers"] == config.bootstrap_servers
    assert meta["consumerGroup"] == config.group_id
    assert [meta["topic"]] == list(config.input_topics)
    # KEDA's default, latest, would count none of a new group's backlog as lag
    assert meta["offsetResetPolicy"] == config.offset_reset
    assert int(meta["lagThreshold"]) > 0


def test_keda_asks_for_no_more_workers_than_the_input_topic_has_partitions() -> None:
    config, spec = _worker_settings(), SCALED["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= config.topic_partitions
    assert spec["triggers"][0]["metadata"].get("allowIdleConsumers", "false") == "false"
    deployment = DEPLOYMENTS[WORKER]["spec"]
    assert spec["minReplicaCount"] <= deployment["replicas"] <= spec["maxReplicaCount"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_manifests_with_the_generated_config() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    objects = [o for o in yaml.safe_load_all(built.stdout) if o]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (deployment,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == WORKER
    ]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {v["configMap"]["name"] for v in volumes} == {config_map["metadata"]["name"]}
    tag = KUSTOMIZATION["images"][0]["newTag"]
    for o in objects:
        if o["kind"] == "Deployment":
            assert _container(o)["image"].endswith(f":{tag}")


# -- Prometheus and Grafana in docker-compose ----------------------------------------------


def _compose_worker_port(name: str) -> int:
    """The metrics port of compose service `name`'s worker, from its real settings."""
    config = _run_config(name)  # test_compose's: the command and environment, loaded
    assert config.metrics_host == "0.0.0.0", f"{name}: Prometheus cannot reach /metrics"
    assert config.metrics_port, f"compose service {name!r} serves no /metrics"
    return config.metrics_port


def _mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts."""
    found = {}
    for volume in COMPOSE[service].get("volumes", []):
        host, container = str(volume).split(":")[:2]
        found[container] = (REPO / host).resolve()
    return found


def _compose_serve_port(name: str) -> int:
    """The HTTP door port of compose service `name`'s `pipeline serve` (its /metrics)."""
    service = COMPOSE[name]
    args = parse_or_fail([str(a) for a in service["command"]], f"compose service {name!r}")
    assert args.command == "serve", f"Prometheus scrapes {name!r}, which runs no worker or serve"
    settings = load_settings(ServeConfig, setting_flags(args), env=_environment(service))
    assert settings.host == "0.0.0.0", f"{name}: Prometheus cannot reach /metrics"
    return settings.http_port


def test_the_compose_prometheus_scrapes_pipeline_services_on_their_metrics_ports() -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    discovered = [sd for job in jobs.values() for sd in job.get("dns_sd_configs", [])]
    assert discovered, "no job discovers the worker containers"
    for sd in discovered:
        assert sd["type"] == "A"
        for name in sd["names"]:
            assert name in COMPOSE, f"Prometheus looks up {name!r}, not a compose service"
            assert _compose_worker_port(name) == sd["port"]
    scraped = {name for sd in discovered for name in sd["names"]}
    for job in jobs.values():
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                host, _, port = target.rpartition(":")
                if host == "localhost":  # Prometheus itself, on its container port
                    assert int(port) == _published("prometheus"), target
                    continue
                assert host in COMPOSE, f"Prometheus scrapes {target}, not a compose service"
                assert _compose_serve_port(host) == int(port), target
                scraped.add(host)
    running = {  # the services that run a worker or the doors (not a one-shot check)
        name
        for name, service in COMPOSE.items()
        if str(service.get("image", "")).startswith("kafka-onnx-pipeline")
        and [str(w) for w in service.get("command") or ["run"]][:1] in (["run"], ["serve"])
        and "--print-config" not in map(str, service.get("command") or [])
    }
    assert running == {"worker", "worker-avro", "serve"}, running
    assert running <= scraped, f"not scraped: {running - scraped}"


def _published(name: str) -> int:
    """The container port compose service `name` publishes (one)."""
    (port,) = COMPOSE[name]["ports"]
    return int(str(port).rsplit(":", 1)[1])


def test_compose_mounts_the_files_prometheus_and_grafana_read() -> None:
    assert _mounts("prometheus")["/etc/prometheus/prometheus.yml"] == PROMETHEUS_FILE
    assert "command" not in COMPOSE["prometheus"], "the image reads the file mounted above"
    grafana = _mounts("grafana")
    assert grafana["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "pipeline.yml").read_text()
    )["providers"]
    assert grafana[provider["options"]["path"]] == GRAFANA / "dashboards"
    home = PurePosixPath(
        COMPOSE["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    )
    assert (GRAFANA / "dashboards" / home.name).is_file()
    assert str(home.parent) == provider["options"]["path"]


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_monitoring_images_are_pinned(name: str) -> None:
    image = COMPOSE[name]["image"]
    assert re.fullmatch(r"(prom/prometheus|grafana/grafana):v?\d+\.\d+\.\d+", image), image


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool (Debian's prometheus package) is not installed",
)
def test_promtool_accepts_the_prometheus_config() -> None:
    checked = subprocess.run(
        ["promtool", "check", "config", str(PROMETHEUS_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_grafana_datasource_is_the_compose_prometheus() -> None:
    (source,) = DATASOURCES
    url = urlsplit(source["url"])
    assert url.hostname in COMPOSE, f"{url.hostname} is not a compose service"
    assert url.port == _published(url.hostname)
    assert source["type"] == "prometheus"
    assert source["jsonData"]["timeInterval"] == PROMETHEUS["global"]["scrape_interval"]


# -- the dashboard -----------------------------------------------------------------------


def _dashboard(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # rows hold their panels when collapsed
    return found


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target of every dashboard."""
    return [
        (f"{path.name}: {panel['title']} {target['refId']}", target["expr"])
        for path in DASHBOARD_FILES
        for panel in _panels(_dashboard(path))
        for target in panel.get("targets", [])
    ]


def _metric(name: str) -> str | None:
    """The METRICS key of a series name, or None."""
    base = name.removeprefix(PREFIX)
    for suffix in ("_bucket", "_sum", "_count"):
        if (
            base.endswith(suffix)
            and METRICS.get(base.removesuffix(suffix), ("",))[0] == "histogram"
        ):
            return base.removesuffix(suffix)
    return base if base in METRICS else None


def _series_names(expr: str) -> set[str]:
    return set(re.findall(rf"\b{PREFIX}[a-z_]+\b", expr))


def _substituted(expr: str) -> str:
    """The expression as Prometheus gets it: Grafana's variables filled in."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr.replace("$__range", "5m"))


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARD_FILES] == ["pipeline.json"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_the_dashboard_is_grafana_dashboard_json(path: Path) -> None:
    dashboard = _dashboard(path)
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]) and dashboard["title"]
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        assert all(target["expr"].strip() for target in panel.get("targets", []))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panels_use_the_provisioned_datasource(path: Path) -> None:
    uids = {source["uid"] for source in DATASOURCES}
    dashboard = _dashboard(path)
    used = [p["datasource"] for p in _panels(dashboard)]
    used += [t["datasource"] for p in _panels(dashboard) for t in p.get("targets", [])]
    used += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
    assert used and all(d["type"] == "prometheus" and d["uid"] in uids for d in used), used


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_variables_are_defined(path: Path) -> None:
    dashboard = _dashboard(path)
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    for variable in dashboard["templating"]["list"]:
        for metric in _series_names(variable["definition"]):
            assert _metric(metric), f"variable {variable['name']} asks for {metric}"
    for where, expr in _expressions():
        used = set(re.findall(r"\$\{?(\w+)\}?", expr))
        assert used <= defined, f"{where} uses undefined {used - defined}"


def test_every_metric_named_in_deploy_is_one_the_exporter_writes() -> None:
    texts = {where: expr for where, expr in _expressions()}
    texts[str(PROMETHEUS_FILE)] = PROMETHEUS_FILE.read_text()
    for path in sorted(K8S.glob("*.yaml")):
        texts[str(path)] = path.read_text()
    for where, text in texts.items():
        unknown = sorted(n for n in _series_names(text) if _metric(n) is None)
        assert not unknown, f"{where} names {unknown}; the exporter writes {sorted(METRICS)}"


def test_grouping_and_matching_labels_belong_to_the_metrics_of_the_expression() -> None:
    for where, expr in _expressions():
        metrics = [_metric(n) for n in _series_names(expr)]
        labels = set(SCRAPE_LABELS)
        for metric in metrics:
            assert metric is not None
            kind, _, names, _ = METRICS[metric]
            labels |= set(names) | ({"le"} if kind == "histogram" else set())
        grouped = {
            label.strip()
            for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr)
            for label in clause.split(",")
            if label.strip()
        }
        matched = set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
        assert grouped | matched <= labels, f"{where}: labels {(grouped | matched) - labels}"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = [expr for _, expr in _expressions()]
    shown = {_metric(n) for expr in exprs for n in _series_names(expr)}
    asked = {
        "records_consumed_total",  # throughput in
        "predictions_total",  # throughput out
        "event_to_prediction_seconds",  # latency
        "queue_wait_seconds",
        "inference_seconds",
        "produce_ack_seconds",
        "consumer_lag",
        "dead_letters_total",
        "batch_size",
        "inference_rows_total",  # over executions: the mean batch size
        "inference_executions_total",
    }
    assert asked <= shown, f"not shown: {asked - shown}"
    by_version = [e for e in exprs if re.search(r"by \([^)]*\bversion\b", e)]
    for metric in ("predictions_total", "event_to_prediction_seconds", "batch_size"):
        assert any(PREFIX + metric in e for e in by_version), f"{metric} not by version"
    assert any("histogram_quantile" in e for e in exprs)
    assert any(re.search(r"by \(stage, error_type\)", e) for e in exprs)


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool (Debian's prometheus package) is not installed",
)
def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:expression_{i}", "expr": _substituted(expr)}
        for i, (_, expr) in enumerate(_expressions())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
