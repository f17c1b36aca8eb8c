"""The environment contract reaches the process that reads it the same way from every
source: the manifest's `spec.env`, the launcher's own environment, and the operator's
pod spec (issue 23, F6: tunables were replaced by their defaults)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from geeps.job import env as config
from geeps.job import spec
from geeps.launch.plan import Options, Ports, plan

# Every tunable (a variable the job itself does not decide), with a value that is not
# its default, and the Config field a process reads it into.
TUNABLES = {
    "GEEPS_TIMEOUT": ("7.5", "timeout", 7.5),
    "GEEPS_WAIT_TIMEOUT": ("12", "wait_timeout", 12.0),
    "GEEPS_MAX_PARKED": ("77", "max_parked", 77),
    "GEEPS_PEER_PARKED": ("5", "peer_parked", 5),
    "GEEPS_PEER_QUEUE": ("33", "peer_queue", 33),
    "GEEPS_PEER_REPLY_BYTES": ("3Mi", "peer_reply_bytes", 3 << 20),
    "GEEPS_BACKEND": ("numpy", "backend", "numpy"),
    "GEEPS_SERVER_BACKEND": ("host-cuda", "server_backend", "host-cuda"),
    "GEEPS_MAX_MESSAGE": ("64Mi", "max_message", 64 << 20),
    "GEEPS_PUSH_BUFFER": ("16Mi", "push_buffer", 16 << 20),
    "GEEPS_SEND_BUFFER": ("64Ki", "send_buffer", 64 << 10),
}


def test_every_tunable_is_listed_here():
    tunables = {v.name for v in config.VARS if v.attr not in config.JOB_DECIDES and not v.hook}
    assert tunables == set(TUNABLES), "a new tunable needs a line in TUNABLES"


def manifest(env=()) -> dict:
    return {"apiVersion": spec.API_VERSION, "kind": spec.KIND, "metadata": {"name": "j"},
            "spec": {"command": ["python", "train.py"], "servers": {"replicas": 1},
                     "workers": {"replicas": 2}, "env": list(env)}}


def loaded_in_child(env: dict) -> dict:
    """The Config a real process builds from `env` (what `geeps server` and a worker's
    Client.from_env read), as JSON."""
    code = ("import dataclasses, json; from geeps.job.env import load; "
            "print(json.dumps({k: v for k, v in dataclasses.asdict(load()).items() "
            "if k != 'consistency'}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def launched_env(m: dict, base: dict, role: str) -> dict:
    """What `geeps run` gives the process: its environment under the plan's (as
    geeps.launch.supervise does)."""
    p = plan(spec.validate(m), Ports((7000,), ()), Options(cwd="/tmp", python=sys.executable))
    proc = next(x for x in p.processes if x.role == role)
    return {**base, **proc.env}


@pytest.mark.parametrize("name", sorted(TUNABLES))
def test_a_tunable_in_spec_env_reaches_server_and_worker(name):
    raw, attr, want = TUNABLES[name]
    m = manifest([{"name": name, "value": raw}])
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    for role in ("server", "worker"):
        assert loaded_in_child(launched_env(m, base, role))[attr] == want, (name, role)


@pytest.mark.parametrize("name", sorted(TUNABLES))
def test_a_tunable_in_the_launchers_environment_reaches_the_process(name):
    raw, attr, want = TUNABLES[name]
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), name: raw}
    assert loaded_in_child(launched_env(manifest(), base, "server"))[attr] == want


@pytest.mark.parametrize("name", sorted(TUNABLES))
def test_a_tunable_in_spec_env_reaches_the_operators_pods(name):
    from geeps_operator import manifests
    raw, attr, want = TUNABLES[name]
    job = spec.validate(manifest([{"name": name, "value": raw}]))
    pod_env = {e["name"]: e["value"] for e in manifests._env(job, "server", 0, "")
               if "value" in e}
    assert getattr(config.load(pod_env), attr) == want


def test_the_manifest_wins_over_the_launchers_environment_and_job_fields_win_over_both():
    m = manifest([{"name": "GEEPS_MAX_PARKED", "value": "9"},
                  {"name": "GEEPS_NUM_WORKERS", "value": "5"}])
    env = launched_env(m, {"GEEPS_MAX_PARKED": "3"}, "server")
    cfg = config.load(env)
    assert cfg.max_parked == 9 and cfg.num_workers == 2


def test_a_bad_tunable_in_spec_env_is_refused_naming_it():
    job = spec.validate(manifest([{"name": "GEEPS_WAIT_TIMEOUT", "value": "inf-ish"}]))
    with pytest.raises(config.ConfigError, match="GEEPS_WAIT_TIMEOUT"):
        config.job_env(job, "server", 0, ["127.0.0.1:7000"])


@pytest.mark.parametrize("policy", ["reject", "skip", "apply"])
def test_spec_non_finite_reaches_servers_locally_and_in_pods(policy):
    from geeps_operator import manifests
    m = manifest()
    m["spec"]["nonFinite"] = policy
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    assert loaded_in_child(launched_env(m, base, "server"))["nonfinite"] == policy
    pod_env = {e["name"]: e["value"] for e in
               manifests._env(spec.validate(m), "server", 0, "") if "value" in e}
    assert config.load(pod_env).nonfinite == policy


def test_spec_non_finite_defaults_to_reject_and_refuses_other_words():
    assert spec.validate(manifest()).non_finite == "reject"
    m = manifest()
    m["spec"]["nonFinite"] = "ignore"
    with pytest.raises(Exception, match="nonFinite"):
        spec.validate(m)


def test_spec_tables_reach_workers_locally_and_in_pods():
    """Issue 17: the per-table filter and server functions reach every process as
    GEEPS_TABLES, from `geeps run` and from the operator alike."""
    from geeps.job import tableopts
    from geeps_operator import manifests
    m = manifest()
    m["spec"]["tables"] = [{"name": "w", "filter": {"type": "topk", "fraction": 0.01},
                            "functions": [{"name": "prox-l1", "args": {"l1": 0.5}}]}]
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    local = loaded_in_child(launched_env(m, base, "worker"))["tables"]
    pod_env = {e["name"]: e["value"] for e in
               manifests._env(spec.validate(m), "worker", 0, "") if "value" in e}
    for text in (local, config.load(pod_env).tables):
        opts = tableopts.parse(text)["w"]
        assert opts.filter.kind == "topk" and opts.filter.params["fraction"] == 0.01
        assert opts.functions == ({"name": "prox-l1", "args": {"l1": 0.5}},)


def test_spec_cache_memory_plan_settings_reach_workers_locally_and_in_pods():
    """Issue 19: the stall level, the region caps and geeps.torch's device budget of
    spec.cache reach a worker as GEEPS_* variables, from `geeps run` and the operator."""
    from geeps_operator import manifests
    m = manifest()
    m["spec"]["cache"] = {"deviceMemory": "1Gi", "stalls": "refuse",
                          "regions": {"pool": "64Mi", "pinnedParameters": "128Mi"},
                          "torchDeviceBudget": "512Mi"}
    want = {"memory_stalls": "refuse", "pool_memory": 64 << 20, "pinned_data_memory": None,
            "pinned_params_memory": 128 << 20, "torch_device_budget": 512 << 20}
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    local = loaded_in_child(launched_env(m, base, "worker"))
    pod_env = {e["name"]: e["value"] for e in
               manifests._env(spec.validate(m), "worker", 0, "") if "value" in e}
    pod = config.load(pod_env)
    for attr, value in want.items():
        assert local[attr] == value and getattr(pod, attr) == value, attr
    # Left out: warn, no caps (one total budget), the whole model on the device.
    plain = config.load(config.job_env(spec.validate(manifest()), "worker", 0, ["h:1"]))
    assert (plain.memory_stalls, plain.pool_memory, plain.torch_device_budget) == \
        ("warn", None, None)


@pytest.mark.parametrize("cache,field", [
    ({"stalls": "loud"}, "spec.cache.stalls"),
    ({"regions": {"pool": "lots"}}, "spec.cache.regions.pool"),
    ({"regions": {"pinnedParams": "1Mi"}}, "spec.cache.regions.pinnedParams"),
    ({"torchDeviceBudget": "4GB"}, "spec.cache.torchDeviceBudget"),
])
def test_bad_memory_plan_settings_are_refused_naming_the_field(cache, field):
    m = manifest()
    m["spec"]["cache"] = cache
    with pytest.raises(spec.SpecError) as e:
        spec.validate(m)
    assert e.value.field == field, e.value
