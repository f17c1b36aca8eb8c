"""The Grafana dashboard JSON: well-formed, covering every metric the issue names, and
every query valid PromQL (checked by promtool, Prometheus' own parser)."""
from __future__ import annotations

import re

import pytest
import yaml

from tests.chart.support import find_binary, run
from tools.promstack import concrete, load_dashboard, panel_queries

# The metrics the dashboard must show (metric, label filter or None).
REQUIRED = [
    ("geeps_cache_reads_total", 'result="hit"'),
    ("geeps_clock", None),
    ("geeps_server_clock", None),
    ("geeps_clock_lag", None),
    ("geeps_read_wait_seconds", None),
    ("geeps_transfer_bytes_total", "push"),
    ("geeps_transfer_bytes_total", "pull"),
    ("geeps_transfer_bytes_total", "h2d"),
    ("geeps_transfer_bytes_total", "d2h"),
    ("geeps_iteration_seconds", None),
    ("geeps_server_update_seconds", None),
    ("geeps_parked_reads", None),
    ("geeps_operator_jobs", "phase"),
]


@pytest.fixture(scope="module")
def dashboard():
    return load_dashboard()


def test_every_required_metric_has_a_query(dashboard):
    exprs = [q["expr"] for q in panel_queries(dashboard)]
    missing = [(m, f) for m, f in REQUIRED
               if not any(re.search(rf"\b{m}(_bucket|_sum|_count)?\b", e) and (f is None or f in e)
                          for e in exprs)]
    assert missing == []


def test_panels_are_well_formed(dashboard):
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "job"]


def test_variables_substitute_and_unknown_ones_fail():
    assert concrete('rate(x{job=~"$job"}[$__rate_interval])', {"job": "a"}) == \
        'rate(x{job=~"a"}[4s])'
    assert concrete("${job:regex} [[job]]", {"job": "b"}) == "b b"
    with pytest.raises(KeyError):
        concrete("x{node=~\"$node\"}", {"job": "a"})


def test_every_query_is_valid_promql(dashboard, tmp_path):
    promtool = find_binary("promtool", "PROMTOOL")
    rules = [{"record": f"geeps:panel_{i}", "expr": concrete(q["expr"], {"job": ".*"})}
             for i, q in enumerate(panel_queries(dashboard))]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = run([promtool, "check", "rules", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    # promtool must be able to say no: a broken expression is refused.
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "geeps:bad", "expr": "sum by (job (geeps_clock)"}]}]}))
    assert run([promtool, "check", "rules", str(path)]).returncode != 0


def _exported_samples() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric geeps and the operator export."""
    from prometheus_client import Counter, Gauge, Histogram

    import geeps.metrics as runtime
    import geeps_operator.metrics as operator
    out: dict[str, set[str]] = {}
    for module in (runtime, operator):
        for obj in vars(module).values():
            if isinstance(obj, (Counter, Gauge, Histogram)):
                labels = set(obj._labelnames)
                name = obj._name
                if isinstance(obj, Counter):
                    out[name + "_total"] = labels
                elif isinstance(obj, Histogram):
                    for suffix in ("_bucket", "_sum", "_count"):
                        out[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
                else:
                    out[name] = labels
    # Collected by a custom collector rather than a metric object.
    for family in operator.JOBS.collect():
        out[family.name] = {"phase"}
    return out


def test_every_queried_metric_and_label_exists_in_the_code(dashboard):
    # Catches a renamed metric or label long before Prometheus would show an empty panel.
    exported = _exported_samples()
    problems = []
    for q in panel_queries(dashboard):
        for name, selector in re.findall(r"\b(geeps_\w+)(?:\{([^}]*)\})?", q["expr"]):
            if name not in exported:
                problems.append(f"{q['panel']}: {name} is not exported")
                continue
            used = set(re.findall(r"(\w+)\s*=~?", selector))
            used |= {l.strip() for by in re.findall(r"by \(([^)]*)\)", q["expr"])
                     for l in by.split(",")}
            if not used <= exported[name]:
                problems.append(f"{q['panel']}: {name} has no label {used - exported[name]}")
    assert problems == []
