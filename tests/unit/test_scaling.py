"""The scaling cost model: pure functions, invariants a reader can check by hand."""
from __future__ import annotations

import math

import pytest

from bench import scaling as sc


def test_one_machine_is_the_baseline():
    m = sc.Model(model_bytes=1e8, bandwidth=1e9, compute_s=0.5, latency_s=0.01)
    assert sc.iteration_time(m, 1) == 0.5
    assert sc.speedup(m, 1) == 1.0


def test_free_network_scales_linearly():
    m = sc.Model(model_bytes=1e8, bandwidth=math.inf, compute_s=0.5)
    assert sc.speedup(m, 16) == pytest.approx(16.0)


def test_wire_bytes_per_machine():
    # 2 machines, no overlap: each sends half the 100 MB model twice (push, serve) at 1 GB/s
    m = sc.Model(model_bytes=1e8, bandwidth=1e9, compute_s=1.0, overlap=0.0)
    assert sc.sync_time(m, 2) == pytest.approx(0.1)
    assert sc.iteration_time(m, 2) == pytest.approx(1.1)


def test_overlap_hides_communication_up_to_compute():
    m = sc.Model(model_bytes=1e8, bandwidth=1e9, compute_s=1.0, overlap=1.0)
    assert sc.iteration_time(m, 2) == pytest.approx(1.0)
    slow = sc.with_(m, bandwidth=1e8)                   # sync 1.0 s: just hidden
    assert sc.iteration_time(slow, 2) == pytest.approx(1.0)
    slower = sc.with_(m, bandwidth=5e7)                 # sync 2.0 s: 1 s exposed
    assert sc.iteration_time(slower, 2) == pytest.approx(2.0)
    assert sc.bottleneck(slower, 2) == "network"


def test_software_bandwidth_caps_the_wire():
    m = sc.Model(model_bytes=1e8, bandwidth=1e10, compute_s=1.0, overlap=0.0,
                 software_bw=1e9)
    assert sc.sync_time(m, 2) == pytest.approx(0.1)
    assert sc.bottleneck(m, 2) == "PS software"


def test_stragglers_grow_with_machines():
    m = sc.Model(model_bytes=0, bandwidth=1e9, compute_s=1.0, jitter_cv=0.1)
    s = [sc.speedup(m, n) for n in (2, 4, 16, 64)]
    assert all(a < b for a, b in zip(s, s[1:]))
    assert all(v < n for v, n in zip(s, (2, 4, 16, 64)))
    assert sc.iteration_time(m, 16) == pytest.approx(1 + 0.1 * math.sqrt(2 * math.log(16)))


def test_fit_sync_recovers_a_line():
    pts = [(b, 0.002 + b / 2e9) for b in (1e6, 1e7, 1e8)]
    lat, bw = sc.fit_sync(pts)
    assert lat == pytest.approx(0.002)
    assert bw == pytest.approx(2e9)


def test_fit_sync_negative_intercept_goes_through_origin():
    lat, bw = sc.fit_sync([(1e6, 0.0001), (1e8, 0.2)])
    assert lat == 0.0 and bw > 0


def test_fit_sync_refuses_degenerate_input():
    with pytest.raises(ValueError):
        sc.fit_sync([(1e6, 0.1)])
    with pytest.raises(ValueError):
        sc.fit_sync([(1e6, 0.1), (1e6, 0.2)])


def test_fit_overlap_round_trips_and_clamps():
    m = sc.Model(model_bytes=1e8, bandwidth=1e8, compute_s=1.0, overlap=0.4)
    it = sc.iteration_time(m, 2)
    assert sc.fit_overlap(1.0, sc.sync_time(m, 2), it) == pytest.approx(0.4)
    assert sc.fit_overlap(1.0, 0.1, 5.0) == 0.0
    # nothing exposed: the least overlap that hides it all
    assert sc.fit_overlap(1.0, 0.5, 1.0) == pytest.approx(0.5)
    assert sc.fit_overlap(1.0, 3.0, 1.0) == 1.0


def test_table_rows_and_cv():
    m = sc.Model(model_bytes=1e6, bandwidth=1e9, compute_s=0.1, batch=32)
    rows = sc.table(m, (1, 2, 4))
    assert [r["n"] for r in rows] == [1, 2, 4]
    assert rows[0]["throughput"] == pytest.approx(320)
    assert sc.cv([1.0, 1.0]) == 0.0 and sc.cv([1.0]) == 0.0
    assert sc.cv([1.0, 3.0]) == pytest.approx(0.5)


def test_robust_cv_ignores_rare_pauses():
    steady = [1.0] * 95 + [10.0] * 5
    assert sc.robust_cv(steady) == 0.0
    assert sc.cv(steady) > 1.0


def test_jitter_for_inverts_the_straggler_term():
    m = sc.Model(model_bytes=0, bandwidth=1e9, compute_s=1.0)
    j = sc.jitter_for(m, 16, 13.0)
    assert sc.speedup(sc.with_(m, jitter_cv=j), 16) == pytest.approx(13.0)
    assert sc.jitter_for(m, 16, 17.0) == 0.0
    assert sc.machines_for(m, 4.0) == 4
    assert sc.machines_for(sc.with_(m, jitter_cv=5.0), 60.0, limit=64) is None
