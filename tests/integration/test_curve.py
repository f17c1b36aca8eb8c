"""CurveZMQ: a client with the job's key is served, one with another key is refused,
and the server keeps serving the job's clients."""
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

import geeps
from geeps.job import env as config
from geeps.wire import curve
from tests.helpers import free_port, kill_group

pytestmark = pytest.mark.integration


def test_wrong_key_is_refused_and_the_job_goes_on(tmp_path):
    job_keys = curve.generate(str(tmp_path / "job"))
    other_keys = curve.generate(str(tmp_path / "other"))
    # The intruder has the server's public key (it is no secret) but its own client key.
    for name in ("server.key",):
        with open(os.path.join(job_keys, name)) as src, \
                open(os.path.join(other_keys, name), "w") as dst:
            dst.write(src.read())
    addr = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, GEEPS_ROLE="server", GEEPS_RANK="0", GEEPS_NUM_WORKERS="1",
               GEEPS_SERVERS=addr, GEEPS_BIND_HOST="127.0.0.1", GEEPS_CURVE_DIR=job_keys)
    log_path = tmp_path / "server.log"
    log_file = open(log_path, "w")     # a file, not a pipe: a full pipe would stall it
    proc = subprocess.Popen([sys.executable, "-m", "geeps", "server"], env=env,
                            start_new_session=True, stderr=log_file)
    try:
        good_cfg = config.load({"GEEPS_SERVERS": addr, "GEEPS_CURVE_DIR": job_keys})
        good = geeps.Client(good_cfg.servers, 0, 1, timeout=10, config=good_cfg)
        t = good.create_table("w", 4, 2, rule="add")

        bad_cfg = dataclasses.replace(good_cfg, curve_dir=other_keys)
        with pytest.raises(geeps.ServerError, match="refused this client's CurveZMQ key"):
            geeps.Client(bad_cfg.servers, 0, 1, timeout=10, config=bad_cfg)

        plain = dataclasses.replace(good_cfg, curve_dir="")
        with pytest.raises((geeps.ServerError, geeps.ServerUnreachable)):
            geeps.Client(plain.servers, 0, 1, timeout=2, config=plain)

        good.push(t, None, np.ones((4, 2), np.float32))   # still served
        good.clock()
        np.testing.assert_array_equal(good.pull(t)[0], np.ones((4, 2)))
        good.close()
    finally:
        kill_group(proc)
        log_file.close()
    log = log_path.read_text()
    assert "CurveZMQ on" in log
    assert log.count("refused a client") == 1, "a refused client must not flood the log"


def test_missing_key_file_is_named(tmp_path):
    with pytest.raises(curve.CurveError, match="client.key"):
        d = str(tmp_path)
        curve.generate(d)
        os.remove(os.path.join(d, "client.key"))
        curve.load(d)
