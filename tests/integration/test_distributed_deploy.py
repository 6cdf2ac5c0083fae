"""The deploy/ files: every YAML and JSON parses, the image is non-root with a health check, the
compose commands are real ``ecosistema`` commands, the dashboard asks for metrics the code
exports, the gateway route tables match the services' routes, and the Helm chart renders."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from ecosistema.cli import app
from ecosistema.distributed import service_routes
from ecosistema.gateway import gateway_config
from ecosistema.gateway.metrics import GatewayMetrics
from ecosistema.platform.config import Settings
from ecosistema.platform.telemetry_http import HttpMetrics
from ecosistema.services import SERVICE_NAMES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "ecosistema"
SECRETS = {"masterKey": "a" * 64, "blindIndexKey": "b" * 64, "gatewaySecret": "g" * 32}


def _files(*suffixes: str) -> list[Path]:
    return sorted(
        p
        for p in DEPLOY.rglob("*")
        if p.suffix in suffixes and "templates" not in p.parts  # Helm templates are Go text
    )


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    yamls, jsons = _files(".yml", ".yaml"), _files(".json")
    assert len(yamls) >= 6 and jsons
    for path in yamls:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
    for path in jsons:
        json.loads(path.read_text())


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_image_runs_as_a_non_root_user_with_a_health_check_and_the_cli_as_entrypoint() -> None:
    instructions = _instructions(DEPLOY / "Dockerfile")
    stages = [i for i in instructions if i.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage build"
    start = instructions.index(stages[-1])
    runtime = instructions[start:]
    assert "COPY --from=build" in " ".join(runtime)
    users = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [i for i in runtime if i.startswith("HEALTHCHECK ")]
    assert len(health) == 1 and "/readyz" in health[0]
    assert 'ENTRYPOINT ["ecosistema"]' in runtime
    cmd = [i for i in runtime if i.startswith("CMD ")][-1]
    default = json.loads(cmd[4:])
    assert default[:2] == ["serve", "catalog"]
    _validate_command(default)
    assert (DEPLOY / "Dockerfile.dockerignore").read_text().startswith("#")


def _validate_command(args: list[str]) -> None:
    """Parse ``ecosistema ARGS`` the way the CLI would (every option, argument and choice),
    without running it; raises the CLI's usage error otherwise."""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("ecosistema", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group: descend into the subcommand
        pending = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, rest = command.resolve_command(ctx, pending)
        assert sub is not None, args
        command = sub
        ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=False)


def _compose_commands() -> list[list[str]]:
    commands = []
    for name, service in _compose()["services"].items():
        if str(service.get("image", "")).startswith("${ECOSISTEMA_IMAGE"):
            commands.append([str(a) for a in service["command"]])
            assert service["command"], name
    return commands


def test_compose_runs_every_service_a_gateway_and_a_migration() -> None:
    services = _compose()["services"]
    for name in SERVICE_NAMES:
        assert services[name]["command"][:2] == ["serve", name], name
    assert services["gateway"]["command"][0] == "gateway"
    assert services["migrate"]["command"] == ["migrate"]
    assert "-js" in services["nats"]["command"]
    assert {"postgres", "redis", "nats", "prometheus", "grafana", "jaeger"} <= set(services)
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


@pytest.mark.parametrize("args", _compose_commands(), ids=lambda a: " ".join(a[:2]))
def test_compose_commands_are_valid_ecosistema_commands(args: list[str]) -> None:
    _validate_command(args)
    subcommand = [a for a in args if not a.startswith("-")][:1]
    done = subprocess.run(
        [sys.executable, "-m", "ecosistema", *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_an_invalid_command_is_caught_by_the_validation() -> None:
    with pytest.raises(Exception, match="No such option"):
        _validate_command(["serve", "catalog", "--prot", "8000"])
    with pytest.raises(Exception, match="No such command"):
        _validate_command(["srve", "catalog"])


def test_prometheus_scrapes_the_gateway_and_every_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert {f"{name}:8000" for name in SERVICE_NAMES} | {"gateway:8000"} <= targets


def _exported_metric_names() -> set[str]:
    names: set[str] = set()
    registries = [HttpMetrics().registry, GatewayMetrics(lambda: []).registry]
    for registry in registries:
        for family in registry.collect():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
            else:
                names.add(family.name)
    return names


def test_dashboard_queries_only_metrics_the_code_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ecosistema.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for expr in exprs for m in re.findall(r"\b(ecosistema_[a-z0-9_]+)", expr)}
    exported = _exported_metric_names()
    assert used, "the dashboard queries something"
    assert used <= exported, sorted(used - exported)
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("request rate", "latency", "error", "outbox backlog", "consumer lag"):
        assert topic in titles, topic


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard_folder() -> None:
    sources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {s["uid"]: s["url"] for s in sources["datasources"]}
    assert uids["prometheus"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "ecosistema.json").read_text())
    panel_sources = {p["datasource"]["uid"] for p in dashboard["panels"]}
    assert panel_sources == {"prometheus"}
    volumes = _compose()["services"]["grafana"]["volumes"]
    assert any(v.endswith(":/var/lib/grafana/dashboards:ro") for v in volumes)


def test_compose_route_table_is_the_services_routes_and_loads_in_the_gateway() -> None:
    table = yaml.safe_load((DEPLOY / "gateway" / "routes.yaml").read_text())
    assert table["routes"] == service_routes(SERVICE_NAMES)
    assert {n: s["instances"] for n, s in table["services"].items()} == {
        n: [f"http://{n}:8000"] for n in SERVICE_NAMES
    }
    gateway_config(table)


def _render_chart(values: dict[str, Any]) -> list[dict[str, Any]]:
    helm = pytest.importorskip(
        "helm_python", reason="Helm chart rendering needs helm-python-sdk (Helm's own engine)"
    )
    chart = helm.chart.Chart.load(str(CHART))
    rendered = chart.render(values, name="shop", namespace="prod", is_install=True)
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]


def test_helm_chart_renders_a_deployment_service_hpa_and_pdb_per_service() -> None:
    docs = _render_chart({"secrets": SECRETS})
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    for name in [*SERVICE_NAMES, "gateway"]:
        full = f"shop-ecosistema-{name}"
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            assert full in by_kind[kind], (kind, full)
        hpa = by_kind["HorizontalPodAutoscaler"][full]
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        container = by_kind["Deployment"][full]["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"] and container["readinessProbe"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        _validate_command([str(a) for a in container["args"]])
    for name in SERVICE_NAMES:
        container = by_kind["Deployment"][f"shop-ecosistema-{name}"]["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["args"][:2] == ["serve", name]
    secret = by_kind["Secret"]["shop-ecosistema-secrets"]["stringData"]
    assert {"master-key", "blind-index-key", "gateway-secret"} <= set(secret)
    ingress = by_kind["Ingress"]["shop-ecosistema"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "shop-ecosistema-gateway"
    routes_map = by_kind["ConfigMap"]["shop-ecosistema-routes"]["data"]["routes.yaml"]
    table = yaml.safe_load(routes_map)
    assert table["routes"] == service_routes(SERVICE_NAMES)
    gateway_config(table)


@pytest.mark.parametrize(
    "values, trusted",
    [
        ({}, ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]),
        ({"config": {"trustedProxies": ["10.42.0.0/16"]}}, ["10.42.0.0/16"]),
        ({"config": {"trustedProxies": []}}, []),
    ],
)
def test_helm_chart_trusts_the_private_ranges_unless_told_otherwise(
    values: dict[str, Any], trusted: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _render_chart({"secrets": SECRETS, **values})
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env = maps["shop-ecosistema-config"]
    assert json.loads(env["ECOSISTEMA_TRUSTED_PROXIES"]) == trusted
    monkeypatch.setenv("ECOSISTEMA_TRUSTED_PROXIES", env["ECOSISTEMA_TRUSTED_PROXIES"])
    settings = Settings()
    table = yaml.safe_load(maps["shop-ecosistema-routes"]["routes.yaml"])
    config = gateway_config(table, settings)
    assert config.trusted_proxies == trusted
    assert not config.trust_forwarded


def test_helm_chart_refuses_to_render_without_its_secrets() -> None:
    helm = pytest.importorskip("helm_python", reason="needs helm-python-sdk")
    with pytest.raises(helm.HelmError, match="masterKey"):
        _render_chart({})


def test_helm_chart_passes_helm_lint() -> None:
    helm = pytest.importorskip("helm_python", reason="needs helm-python-sdk")
    report = helm.lint(str(CHART), {"secrets": SECRETS}, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] > 1] == []


def test_helm_chart_route_file_is_the_services_routes() -> None:
    routes = yaml.safe_load((CHART / "files" / "routes.yaml").read_text())
    assert routes == service_routes(SERVICE_NAMES)
