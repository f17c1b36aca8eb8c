import os

import pytest

from geeps.job import env as config
from geeps.job.units import parse_bytes


def test_defaults_load():
    cfg = config.load({})
    assert cfg.role == "worker" and cfg.num_workers == 1 and cfg.device_memory is None


def test_round_trip_through_the_environment():
    cfg = config.load({"GEEPS_SERVERS": "a:1,b:2", "GEEPS_CONSISTENCY": "ssp:3",
                       "GEEPS_DEVICE_MEMORY": "2Gi", "GEEPS_NUM_WORKERS": "4",
                       "GEEPS_RANK": "3"})
    assert cfg.servers == ("a:1", "b:2") and cfg.consistency.slack == 3
    assert cfg.device_memory == 2 * 2**30
    assert config.load(cfg.to_env()) == cfg


@pytest.mark.parametrize("var,value,accepts", [
    ("GEEPS_ROLE", "boss", "server | worker | coordinator"),
    ("GEEPS_NUM_WORKERS", "0", ">= 1"),
    ("GEEPS_NUM_WORKERS", "two", ">= 1"),
    ("GEEPS_CONSISTENCY", "ssp:0", "ssp:N"),
    ("GEEPS_CONSISTENCY", "eventual", "bsp"),
    ("GEEPS_SERVERS", "localhost", "host:port"),
    ("GEEPS_SERVERS", "a:99999", "host:port"),
    ("GEEPS_DEVICE_MEMORY", "4GB", "quantity"),
    ("GEEPS_METRICS_PORT", "70000", "0-65535"),
    ("GEEPS_TIMEOUT", "-1", "seconds > 0"),
    ("GEEPS_WAIT_TIMEOUT", "inf", "seconds > 0 (finite)"),
    ("GEEPS_INSECURE", "maybe", "0 | 1"),
    ("GEEPS_MEMORY_STALLS", "loud", "refuse | warn | accept"),
    ("GEEPS_PINNED_DATA_MEMORY", "1GB", "quantity"),
    ("GEEPS_TORCH_DEVICE_BUDGET", "-1", "quantity"),
])
def test_bad_values_name_the_variable_and_what_it_accepts(var, value, accepts):
    with pytest.raises(config.ConfigError) as e:
        config.load({var: value})
    assert e.value.var == var
    assert var in str(e.value) and accepts in str(e.value)


def test_worker_rank_must_be_below_num_workers():
    with pytest.raises(config.ConfigError, match="GEEPS_RANK"):
        config.load({"GEEPS_RANK": "2", "GEEPS_NUM_WORKERS": "2"})


def test_quantities():
    assert parse_bytes("512Mi") == 512 * 2**20
    assert parse_bytes("1.5G") == 1_500_000_000
    assert parse_bytes("100") == 100


def test_environment_doc_is_current():
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "docs", "environment.md")) as f:
        assert config.markdown_table() in f.read(), \
            "docs/environment.md is stale: regenerate its table with `geeps env`"


def test_colocate_needs_a_worker_with_one_shard_per_worker():
    ok = {"GEEPS_COLOCATE": "1", "GEEPS_NUM_WORKERS": "2",
          "GEEPS_SERVERS": "127.0.0.1:7000,127.0.0.1:7001"}
    assert config.load(ok).colocate
    for bad in ({"GEEPS_SERVERS": "127.0.0.1:7000"}, {"GEEPS_ROLE": "server"}):
        with pytest.raises(config.ConfigError, match="GEEPS_COLOCATE.*one GEEPS_SERVERS "
                                                      "entry per worker"):
            config.load({**ok, **bad})
