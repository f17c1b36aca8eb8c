"""The Helm chart, rendered by a real helm binary and checked object by object.

    python tools/fetch_helm.py && pytest tests/chart -q

Every scenario (default values and each ci/*-values.yaml) is linted, rendered for the
oldest and newest Kubernetes the chart supports, and every object validated against
that version's OpenAPI schema (kubernetes-validate, strict: unknown fields fail).
"""
from __future__ import annotations

import json
import os
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.monitoring_schemas import SCHEMAS as MONITORING_SCHEMAS
from tests.chart.support import (CHART, by_kind, helm_binary, run, scenario_files,
                                 template, template_fails)

SCENARIOS = [None] + scenario_files()
SCENARIO_IDS = ["default"] + [os.path.basename(f)[:-len("-values.yaml")] for f in SCENARIOS[1:]]
OLDEST = "1.30.0"                                   # Chart.yaml kubeVersion floor
NEWEST = kubernetes_validate.latest_version()       # newest schemas kubernetes-validate has


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_binary()


@pytest.fixture(scope="module")
def rendered(helm):
    """scenario id -> objects rendered for OLDEST (rendering does not depend on the version)."""
    return {sid: template(helm, (f,) if f else ()) for sid, f in zip(SCENARIO_IDS, SCENARIOS)}


def test_every_scenario_file_is_picked_up():
    # A scenario named without the -values.yaml suffix would silently never be rendered.
    ci = os.path.join(CHART, "ci")
    assert sorted(os.listdir(ci)) == sorted(os.path.basename(f) for f in SCENARIOS[1:])
    assert len(SCENARIOS) >= 4


@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_helm_lint_is_clean(helm, values):
    argv = [helm, "lint", "--strict", CHART] + (["--values", values] if values else [])
    out = run(argv)
    assert out.returncode == 0, out.stdout + out.stderr
    problems = [ln for ln in out.stdout.splitlines() if re.match(r"\[(WARNING|ERROR)\]", ln)]
    assert problems == [], out.stdout


def validate_object(obj: dict, version: str) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in MONITORING_SCHEMAS:
        # CRD-defined kinds: kubernetes-validate has no schema for them (see monitoring_schemas).
        jsonschema.validate(obj, MONITORING_SCHEMAS[key])
        return
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", [OLDEST, NEWEST])
@pytest.mark.parametrize("values", SCENARIOS, ids=SCENARIO_IDS)
def test_every_rendered_object_validates(helm, values, version):
    objs = template(helm, (values,) if values else (), kube_version=version)
    assert objs, "nothing rendered"
    failures = []
    for obj in objs:
        try:
            validate_object(obj, version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError,
                kubernetes_validate.SchemaNotFoundError) as e:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {e}")
    assert failures == []


def test_validation_catches_a_broken_object(helm, rendered):
    # The validators above must be able to fail: a misspelt field in a Deployment and in a
    # PodMonitor are each rejected.
    dep = json.loads(json.dumps(by_kind(rendered["default"], "Deployment")[0]))
    dep["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(dep, OLDEST)
    pm = json.loads(json.dumps(by_kind(rendered["monitoring"], "PodMonitor")[0]))
    pm["spec"]["podMetricsEndpoints"][0]["honorlabels"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate_object(pm, OLDEST)


def test_chart_refuses_kubernetes_older_than_its_floor(helm):
    out = run([helm, "template", "geeps", CHART, "--kube-version", "1.29.0"])
    assert out.returncode != 0 and "kubeVersion" in out.stderr, out.stderr


def test_kinds_per_scenario(rendered):
    kinds = {sid: sorted({o["kind"] for o in objs}) for sid, objs in rendered.items()}
    base = ["ConfigMap", "CustomResourceDefinition", "Deployment", "Service"]
    assert kinds["default"] == sorted(base + ["ClusterRole", "ClusterRoleBinding", "Role",
                                              "RoleBinding", "ServiceAccount"])
    assert {"Role", "RoleBinding", "PodMonitor", "ClusterRole"} <= set(kinds["namespaced"])
    assert {"ServiceMonitor", "PodMonitor"} <= set(kinds["monitoring"])
    assert "NetworkPolicy" in kinds["hardened"]
    byo = set(kinds["bring-your-own-rbac"])
    assert not byo & {"ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                      "ClusterRoleBinding", "ConfigMap"}


def test_one_kind_per_template_file(helm):
    # `# Source:` comments tell which template each object came from.
    seen: dict[str, set[str]] = {}
    for values in SCENARIOS:
        argv = [helm, "template", "geeps", CHART] + (["--values", values] if values else [])
        out = run(argv)
        assert out.returncode == 0, out.stderr
        for doc in out.stdout.split("\n---\n"):
            m = re.search(r"^# Source: [^/]+/(templates/\S+)", doc, re.M)
            obj = yaml.safe_load(doc)
            if m and obj:
                seen.setdefault(m.group(1), set()).add(obj["kind"])
    many = {src: kinds for src, kinds in seen.items() if len(kinds) > 1}
    assert many == {}
    # Every template file renders in at least one scenario (no dead templates).
    templates = {f"templates/{f}" for f in os.listdir(os.path.join(CHART, "templates"))
                 if f.endswith(".yaml")}
    assert templates == set(seen)


def test_common_labels_and_namespace(rendered):
    for sid, objs in rendered.items():
        for o in objs:
            if o["kind"] in ("CustomResourceDefinition",):
                continue
            labels = o["metadata"].get("labels", {})
            assert labels.get("app.kubernetes.io/managed-by") == "Helm", (sid, o["kind"])
            assert labels.get("app.kubernetes.io/part-of") == "geeps", (sid, o["kind"])
            if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                assert o["metadata"].get("namespace"), (sid, o["kind"], "has no namespace")


def container(objs: list[dict]) -> dict:
    (dep,) = by_kind(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_deployment_is_hardened_and_elects_a_leader(rendered, sid):
    (dep,) = by_kind(rendered[sid], "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == (2 if sid == "hardened" else 1)
    # Replicas wait for the Lease, so a rolling update never has two leaders.
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert "--leader-elect" in container(rendered[sid])["args"]
    assert "--lease-namespace=geeps-system" in container(rendered[sid])["args"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    c = container(rendered[sid])
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports[get["port"]] == ports["health"], probe
    # The health and metrics ports the probes and Service use are the ones passed to the
    # operator's flags.
    assert f"--health-port={ports['health']}" in c["args"]
    assert f"--metrics-port={ports['metrics']}" in c["args"]
    (svc,) = by_kind(rendered[sid], "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"] == svc["spec"]["selector"]


@pytest.mark.parametrize("sid", SCENARIO_IDS)
def test_operator_cli_accepts_the_rendered_args(rendered, sid):
    # The real argument parser of `geeps-operator` (what the image's ENTRYPOINT runs)
    # must accept every flag the chart passes, extraArgs included.
    from geeps_operator.main import _parser
    args = _parser().parse_args(container(rendered[sid])["args"])
    (dep,) = by_kind(rendered[sid], "Deployment")
    ports = {p["name"]: p["containerPort"] for p in container(rendered[sid])["ports"]}
    assert (args.health_port, args.metrics_port) == (ports["health"], ports["metrics"])
    assert args.server is None and args.kubeconfig is None, "in a pod: its service account"


def test_watch_namespace_flag(rendered):
    assert "--all-namespaces" in container(rendered["default"])["args"]
    args = container(rendered["namespaced"])["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=ml-team", "--namespace=ml-research"]
    roles = [r for r in by_kind(rendered["namespaced"], "Role")
             if not r["metadata"]["name"].endswith("-leader-election")]
    bindings = [b for b in by_kind(rendered["namespaced"], "RoleBinding")
                if not b["metadata"]["name"].endswith("-leader-election")]
    assert [r["metadata"]["namespace"] for r in roles] == ["ml-team", "ml-research"]
    assert [b["metadata"]["namespace"] for b in bindings] == ["ml-team", "ml-research"]


def test_cluster_scoped_names_carry_the_release_namespace(helm):
    a = template(helm, namespace="team-a")
    b = template(helm, namespace="team-b")
    names = [{o["metadata"]["name"] for o in objs
              if o["kind"] in ("ClusterRole", "ClusterRoleBinding")} for objs in (a, b)]
    assert names[0] and not names[0] & names[1]
    assert all("team-a" in n for n in names[0])


def test_editor_and_viewer_roles_aggregate_to_the_built_in_ones(rendered):
    roles = {r["metadata"]["name"].rsplit("-", 1)[1]: r
             for r in by_kind(rendered["default"], "ClusterRole")
             if r["metadata"]["name"].endswith(("-geepsjob-editor", "-geepsjob-viewer"))}
    editor, viewer = roles["editor"], roles["viewer"]
    assert editor["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert viewer["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert _triples(viewer["rules"]) == {("geeps.dev", r, v) for r in ("geepsjobs",
                                         "geepsjobs/status") for v in ("get", "list", "watch")}
    assert ("geeps.dev", "geepsjobs", "create") in _triples(editor["rules"])


def test_allow_host_path_reaches_the_operator(helm, rendered):
    from geeps_operator.main import _parser
    assert not _parser().parse_args(container(rendered["default"])["args"]).allow_host_path
    objs = template(helm, (), ("jobPods.allowHostPath=true",))
    assert _parser().parse_args(container(objs)["args"]).allow_host_path


def test_bindings_name_the_service_account_the_pod_runs_as(rendered):
    for sid, objs in rendered.items():
        sa = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"]
        for b in by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding"):
            subjects = [(s["kind"], s["name"], s["namespace"]) for s in b["subjects"]]
            assert subjects == [("ServiceAccount", sa, "geeps-system")], sid
            roles = {r["metadata"]["name"] for r in by_kind(objs, b["roleRef"]["kind"])}
            assert b["roleRef"]["name"] in roles, sid
        if sid != "bring-your-own-rbac":
            assert [s["metadata"]["name"] for s in by_kind(objs, "ServiceAccount")] == [sa]


def test_image_reference(rendered):
    assert container(rendered["default"])["image"] == "geeps/operator:0.1.0"
    assert container(rendered["hardened"])["image"] == (
        "registry.example.com/ml/geeps-operator@sha256:" + "0123456789abcdef" * 4)
    # The jobs' default image: the chart's runtimeImage, through the operator's flag.
    assert "--runtime-image=geeps/runtime:0.1.0" in container(rendered["default"])["args"]
    assert "--runtime-image=registry.example.com/ml/geeps-runtime@sha256:" + \
        "fedcba9876543210" * 4 in container(rendered["hardened"])["args"]


def test_dashboard_configmap_carries_the_dashboard(rendered):
    (cm,) = by_kind(rendered["default"], "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    with open(os.path.join(CHART, "dashboards", "geeps.json")) as f:
        assert json.loads(cm["data"]["geeps.json"]) == json.load(f)
    (moved,) = by_kind(rendered["monitoring"], "ConfigMap")
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["annotations"]["grafana_folder"] == "Training"


def test_monitors_select_what_they_should(rendered):
    (sm,) = by_kind(rendered["monitoring"], "ServiceMonitor")
    (svc,) = by_kind(rendered["monitoring"], "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (pm,) = by_kind(rendered["monitoring"], "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    (pm_ns,) = by_kind(rendered["namespaced"], "PodMonitor")
    assert pm_ns["spec"]["namespaceSelector"] == {"matchNames": ["ml-team", "ml-research"]}


def test_network_policy(rendered):
    (np,) = by_kind(rendered["hardened"], "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (dep,) = by_kind(rendered["hardened"], "Deployment")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()
    api = np["spec"]["egress"][0]
    assert sorted(p["port"] for p in api["ports"]) == [443, 6443]
    assert [t["ipBlock"]["cidr"] for t in api["to"]] == ["10.0.0.1/32", "192.168.10.0/24"]
    # Worker 0's metrics port, in any namespace: where the operator reads progress; and
    # a coordinated job's coordinator, whose membership it reads and changes.
    pods = np["spec"]["egress"][1]
    assert pods["ports"] == [{"port": "metrics", "protocol": "TCP"},
                             {"port": "coordinator", "protocol": "TCP"}]
    assert pods["to"][0]["podSelector"]["matchExpressions"][0]["key"] == "geeps.dev/job-name"


# --- values.schema.json -------------------------------------------------------------

@pytest.mark.parametrize("typo,bad", [("imagee.tag=x", "imagee"), ("image.tagg=x", "tagg"),
                                      ("metrics.serviceMonitor.enabeld=true", "enabeld"),
                                      ("dashboard.labelkey=x", "labelkey"),
                                      ("networkPolicy.enable=true", "enable"),
                                      ("resources.request.cpu=1", "request")])
def test_schema_rejects_a_typo(helm, typo, bad):
    out = template_fails(helm, typo)
    assert out.returncode != 0, f"--set {typo} rendered without complaint"
    assert "additional properties" in out.stderr.lower() and f"'{bad}'" in out.stderr, out.stderr


@pytest.mark.parametrize("bad", ["health.port=0", "image.pullPolicy=Sometimes",
                                 "operator.watchNamespace=Not_A_Namespace",
                                 "metrics.podMonitor.interval=soon"])
def test_schema_rejects_a_bad_value(helm, bad):
    out = template_fails(helm, bad)
    assert out.returncode != 0, f"--set {bad} rendered without complaint"


def _schema():
    with open(os.path.join(CHART, "values.schema.json")) as f:
        return json.load(f)


def _values():
    with open(os.path.join(CHART, "values.yaml")) as f:
        return yaml.safe_load(f)


def test_schema_and_values_describe_the_same_keys():
    def keys(schema: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, sub in schema.get("properties", {}).items():
            out.add(prefix + k)
            out |= keys(sub, prefix + k + ".")
        return out

    def value_keys(values: dict, schema: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in values.items():
            out.add(prefix + k)
            sub = schema.get("properties", {}).get(k, {})
            if isinstance(v, dict) and "properties" in sub:
                out |= value_keys(v, sub, prefix + k + ".")
        return out

    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(_values(), schema)
    # Every chart-defined object forbids unknown keys.
    def closed(s: dict, where: str = "") -> list[str]:
        bad = [] if "properties" not in s or s.get("additionalProperties") is False else [where]
        for k, sub in s.get("properties", {}).items():
            bad += closed(sub, f"{where}.{k}")
        return bad
    assert closed(schema) == []
    assert keys(schema) - {"global"} == value_keys(_values(), schema)


def test_every_values_key_has_a_comment():
    # Keys of free-form Kubernetes objects (resources, securityContext...) are described
    # by the comment on the object; every key the chart itself defines has its own.
    schema = _schema()
    with open(os.path.join(CHART, "values.yaml")) as f:
        lines = f.read().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [m.group(2)]
        stack.append((indent, m.group(2)))
        node, chart_defined = schema, True
        for part in path:
            if "properties" not in node or part not in node["properties"]:
                chart_defined = False
                break
            node = node["properties"][part]
        prev = lines[i - 1].strip() if i else ""
        if chart_defined and not prev.startswith("#"):
            missing.append(".".join(path))
    assert missing == []


# --- the CRD -----------------------------------------------------------------------

def test_chart_crd_equals_the_generated_one(rendered):
    from geeps_operator.crd import build_crd
    (crd,) = by_kind(rendered["default"], "CustomResourceDefinition")
    assert crd == build_crd(), (
        "charts/geeps-operator/crds/ is stale: regenerate it with\n"
        "  python -m geeps_operator.crd > charts/geeps-operator/crds/geepsjobs.geeps.dev.yaml")
    assert os.listdir(os.path.join(CHART, "crds")) == ["geepsjobs.geeps.dev.yaml"]


# --- RBAC ----------------------------------------------------------------------------

def _triples(rules: list[dict]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def _only_group_resource_verb(rules: list[dict]) -> None:
    # resourceNames or nonResourceURLs would be rights the operator's lists do not hold.
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule


@pytest.mark.parametrize("sid", [s for s in SCENARIO_IDS if s != "bring-your-own-rbac"])
def test_rbac_grants_exactly_what_the_operator_uses(rendered, sid):
    """Rendered rules == geeps_operator.rbac, nothing more, nothing less.

    geeps_operator.rbac is itself checked by the operator's end-to-end test against
    every request the running operator makes, so this pins the chart to real use."""
    from geeps_operator.rbac import CLUSTER_RULES, JOB_RBAC_RULES, LEASE_RULES, NAMESPACE_RULES
    objs = rendered[sid]
    cluster_roles = [r for r in by_kind(objs, "ClusterRole") if not r["metadata"]["name"]
                     .endswith(("-geepsjob-editor", "-geepsjob-viewer"))]
    (lease_role,) = [r for r in by_kind(objs, "Role")
                     if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "geeps-system"
    assert _triples(lease_role["rules"]) == _triples(LEASE_RULES)
    roles = [r for r in by_kind(objs, "Role") if r is not lease_role]
    for r in cluster_roles + roles:
        _only_group_resource_verb(r["rules"])
    (cluster_role,) = cluster_roles
    if sid == "namespaced":
        assert len(roles) == 2
        for role in roles:
            assert _triples(role["rules"]) == _triples(JOB_RBAC_RULES)
        assert _triples(cluster_role["rules"]) == _triples(CLUSTER_RULES) | _triples(
            NAMESPACE_RULES)
    else:
        assert roles == []
        assert _triples(cluster_role["rules"]) == _triples(JOB_RBAC_RULES) | _triples(
            CLUSTER_RULES)


def test_rbac_comparison_can_fail():
    from geeps_operator.rbac import JOB_RBAC_RULES
    more = list(JOB_RBAC_RULES) + [{"apiGroups": [""], "resources": ["secrets"],
                                    "verbs": ["get"]}]
    assert _triples(more) != _triples(JOB_RBAC_RULES)
    with pytest.raises(AssertionError):
        _only_group_resource_verb([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}])


# --- docs/install.md ----------------------------------------------------------------

def test_install_doc_names_real_values_and_objects(helm):
    """The values and object names docs/install.md tells people to use exist."""
    from tests.helpers import REPO
    with open(os.path.join(REPO, "docs", "install.md")) as f:
        doc = f.read()
    schema = _schema()

    def known(path: str) -> bool:
        node = schema
        for part in path.split("."):
            props = node.get("properties", {})
            if part in props:
                node = props[part]
            elif isinstance(node.get("additionalProperties"), dict):
                node = node["additionalProperties"]      # a free-form map's own key
            else:
                return False
        return True

    set_keys = re.findall(r"--set ([\w.]+)=", doc)
    # The chart values table only (the doc's other tables name conditions, not values).
    values_table = doc.split("| value | default | what it does |", 1)[1].split("\n\n", 1)[0]
    table_keys = [k for row in re.findall(r"^\| (`.*?) \|", values_table, re.M)
                  for k in re.findall(r"`([\w.]+)`", row)]
    assert set_keys and table_keys
    assert [k for k in set_keys + table_keys if not known(k)] == []
    # The release name the doc installs as gives the object names it then uses.
    objs = template(helm, release="geeps-operator")
    names = {o["metadata"]["name"] for o in objs}
    for name in re.findall(r"(?:deployment|svc|clusterrole)/([\w-]+)", doc):
        assert name in names, name
