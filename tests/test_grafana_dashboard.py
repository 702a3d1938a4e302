"""deploy/grafana/ldm-serve.json imports into any Grafana: its data source is a variable, its
panels are well formed. (That it queries only exported metrics is checked against real
processes in tests/e2e/test_operations.py.)"""

import json
import re
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "ldm-serve.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_importable_anywhere(dashboard: dict) -> None:
    assert dashboard["id"] is None  # Grafana assigns one on import
    assert dashboard["uid"] == "ldm-serve" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    # No data source of this installation baked in: a variable the importer picks.
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["datasource"] == DATASOURCE
    assert "__inputs" not in dashboard and "${DS_" not in DASHBOARD.read_text()


def test_panels_are_well_formed_and_laid_out(dashboard: dict) -> None:
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip()
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_panels_cover_what_operators_watch(dashboard: dict) -> None:
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for needed in (
        "ldm_jobs_finished_total",
        "ldm_queue_depth",
        "ldm_queue_oldest_age_seconds",
        "ldm_live_workers",
        "ldm_worker_denoise_seconds_bucket",
        "ldm_worker_job_latency_seconds_bucket",
        "ldm_worker_batch_images_bucket",
        "ldm_worker_gpu_memory_allocated_bytes",
        "ldm_http_requests_total",
        "ldm_http_request_duration_seconds_bucket",
    ):
        assert needed in exprs, needed
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le) (rate(ldm_worker_denoise" in exprs
    # Cluster figures come identically from every API replica: the aggregation nearest to
    # them is max() over replicas, never a sum.
    cluster = r"ldm_(queue_depth|jobs_running|queue_oldest_age_seconds|live_workers|jobs_finished)"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for found in re.finditer(cluster, expr):
                nearest = re.findall(r"\b(sum|max|min|avg|count)\b", expr[: found.start()])
                assert nearest and nearest[-1] == "max", expr
