"""pwlock's Grafana dashboard (cluster/grafana/pwlock_grafana_dashboard.json): well-formed as Ray's
own dashboards are (a hidden Prometheus `datasource` variable every panel uses, a `SessionName`
filter), and every query names a metric pwlock's code exports, with labels it has."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.dashboard.modules.metrics import templates

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "cluster" / "grafana" / "pwlock_grafana_dashboard.json"
RAY_LABELS = {"SessionName", "NodeAddress", "Component", "Version", "WorkerId"}  # Ray adds these to every metric
METRIC_CLASSES = {"Gauge", "Counter", "Histogram"}
PANEL_TYPES = {"timeseries", "graph", "stat", "gauge", "bargauge", "table", "row"}

_target = {
    "type": "object",
    "required": ["expr", "refId", "legendFormat"],
    "properties": {"expr": {"type": "string", "minLength": 1}, "refId": {"type": "string", "pattern": "^[A-Z]$"}},
}
SCHEMA = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 27},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {"list": {"type": "array", "items": {"type": "object", "required": ["name", "type"]}}},
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "title", "type", "datasource", "gridPos", "targets"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": sorted(PANEL_TYPES)},
                    "datasource": {"const": "${datasource}"},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {k: {"type": "integer", "minimum": 0} for k in "xywh"},
                    },
                    "targets": {"type": "array", "minItems": 1, "items": _target},
                },
            },
        },
    },
}


def exported_metrics() -> dict[str, set[str]]:
    """Prometheus name -> label keys of every Ray metric pwlock's code creates (Ray prefixes `ray_`)."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "pwlock").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                METRIC_CLASSES
            ):
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    tags = next((k.value for k in node.keywords if k.arg == "tag_keys"), None)
                    keys = set(ast.literal_eval(tags)) if tags is not None else set()
                    found[f"ray_{node.args[0].value}"] = keys
    return found


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def exprs(d: dict) -> list[str]:
    out = [t["expr"] for p in d["panels"] for t in p["targets"]]
    return out + [v["query"]["query"] for v in d["templating"]["list"] if v["type"] == "query"]


def test_dashboard_is_well_formed():
    d = dashboard()
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(d, SCHEMA)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]  # Grafana's grid is 24 wide
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])


def test_every_query_names_an_exported_pwlock_metric_with_its_labels():
    metrics = exported_metrics()
    assert {"ray_pwlock_trials", "ray_pwlock_gpu_hours", "ray_pwlock_trial_hours"} <= set(metrics)
    d = dashboard()
    used = set()
    for expr in exprs(d):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names = set(re.findall(r"\bray_pwlock_\w+", expr))
        assert names, f"{expr}: no pwlock metric"
        assert names <= set(metrics), f"{expr}: {names - set(metrics)} is exported nowhere in pwlock/"
        used |= names
        labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        labels |= {w for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for w in re.findall(r"\w+", group)}
        allowed = RAY_LABELS | set.union(*(metrics[n] for n in names))
        assert labels <= allowed, f"{expr}: labels {labels - allowed} are on none of {names}"
        for variable in re.findall(r"\$(\w+)", expr):
            assert variable in {v["name"] for v in d["templating"]["list"]} | {"__rate_interval"}, expr
    for p in d["panels"]:  # every panel follows the dashboard's filters, as Ray's do
        for t in p["targets"]:
            assert 'SessionName=~"$SessionName"' in t["expr"] and 'experiment=~"$experiment"' in t["expr"]
    assert used == set(metrics), f"metrics without a panel: {sorted(set(metrics) - used)} (add one to {DASHBOARD})"


@pytest.mark.parametrize("variable", ["SessionName", "experiment"])
def test_filters_are_label_values_of_a_pwlock_metric(variable):
    (v,) = [v for v in dashboard()["templating"]["list"] if v["name"] == variable]
    assert re.fullmatch(rf"label_values\(ray_pwlock_\w+(\{{.*\}})?, {variable}\)", v["query"]["query"])
    assert v["datasource"] == "${datasource}" and v["definition"] == v["query"]["query"]


def test_installed_where_rays_grafana_provisioning_reads_dashboards():
    """Ray's dashboard writes Grafana's provisioning to read every JSON file in
    <session>/metrics/grafana/dashboards (unless RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR): the
    head's start commands copy pwlock's file there after `ray start`, the image has it, and its uid
    is none of Ray's."""
    assert "path: {dashboard_output_folder}" in templates.DASHBOARD_PROVISIONING_TEMPLATE
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    start = config["head_start_ray_commands"]
    copy = [c for c in start if DASHBOARD.name in c]
    assert copy and start.index(copy[0]) > max(i for i, c in enumerate(start) if "ray start" in c)
    assert copy[0].split() == [
        "cp",
        f"/opt/pwlock/{DASHBOARD.relative_to(ROOT)}",
        "/tmp/ray/session_latest/metrics/grafana/dashboards/",
    ]
    assert "COPY cluster ./cluster" in (ROOT / "docker" / "Dockerfile").read_text()
    ray_uids = {
        json.loads(p.read_text()).get("uid")
        for p in (Path(ray.__file__).parent / "dashboard" / "modules" / "metrics" / "dashboards").glob("*.json")
    }
    assert dashboard()["uid"] not in ray_uids
