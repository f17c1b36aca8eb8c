"""A shard's update rules through the backend seam (GEEPS_SERVER_BACKEND).

`host-cuda` is the CuPy backend's own code on the CUDA sources compiled for the CPU
(geeps.backend.hostcupy): the shard keeps its rows and optimizer state in "device"
memory and runs sgd_update, momentum_update and adam_update, gathers and scatters
sparse rows with gather_rows/scatter_rows, exactly as it would on a GPU. Compared with
the NumPy twins (the default backend) bit for bit: the host build rounds every float32
operation as NumPy does, sqrt and division included (IEEE, correctly rounded), so
here even Adam is exact. On a GPU the same holds for finite inputs (the kernels use
explicit .rn PTX, no FMA, no flush-to-zero; tests/gpu checks it on a device).
"""
import json

import numpy as np
import pytest

from geeps.backend import BackendUnavailable, hostcuda, select_rules
from geeps.job.env import ConfigError
from geeps.server.rules import RuleState
from geeps.server.shard import MAX_RUNS, ShardState
from geeps.wire import protocol as P

pytestmark = pytest.mark.skipif(hostcuda.compiler() is None,
                                reason="no C++ compiler (g++): the CUDA sources cannot be "
                                       "compiled for the CPU")

HYPER = {"sgd": {"lr": 0.1, "weight_decay": 0.01},
         "momentum": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
         "adam": {"lr": 0.01, "weight_decay": 0.001,
                  "schedule": {"decay": "step", "milestones": [2], "gamma": 0.5}}}


@pytest.fixture(scope="module")
def dev():
    return select_rules("host-cuda")


def _grads(rng, shape):
    g = rng.standard_normal(shape).astype(np.float32)
    g[0, :2] = [1e-21, -3e-20]       # Adam's v of these is subnormal: kept, not flushed
    return g


def _same(a: RuleState, b: RuleState, pa, pb, what):
    assert pa.tobytes() == pb.tobytes(), f"rows differ after {what}"
    assert a.step == b.step
    assert sorted(a.slots) == sorted(b.slots)
    for k in a.slots:
        assert a.slots[k].tobytes() == b.slots[k].tobytes(), f"{k} differs after {what}"


@pytest.mark.parametrize("rule", ["sgd", "momentum", "adam", "add"])
def test_rule_state_on_the_kernels_gives_the_twins_bits(dev, rule):
    n, w = 37, 5
    rng = np.random.default_rng(3)
    init = rng.standard_normal((n, w)).astype(np.float32)
    hyper = HYPER.get(rule, {})
    twin, kern = RuleState(rule, hyper, (n, w)), RuleState(rule, hyper, (n, w), dev)
    assert (kern.device is not None) == (rule != "add"), "add stays on the host"
    p_twin, p_kern = twin.hold(init.copy()), kern.hold(init.copy())
    for step in range(3):
        g = _grads(rng, (n, w))
        twin.apply(p_twin, g, scale=0.5)
        kern.apply(p_kern, g, scale=0.5)
        _same(twin, kern, p_twin, p_kern, f"dense apply {step}")
    # One update in blocks (a clock applied early, chunk by chunk).
    g = _grads(rng, (n, w))
    for st, p in ((twin, p_twin), (kern, p_kern)):
        scratch = g.copy()
        st.begin()
        for lo in range(0, n, 8):
            st.apply_slice(p, scratch, lo, min(n, lo + 8), scale=0.25)
    _same(twin, kern, p_twin, p_kern, "apply_slice")
    # Sparse: scattered ids (gather_rows/scatter_rows) and a contiguous run of ids.
    for ids in (np.array([30, 2, 17, 5, 11]), np.arange(4, 9)):
        g = _grads(rng, (len(ids), w))
        twin.apply(p_twin, g.copy(), rows=ids, scratch=True)
        kern.apply(p_kern, g.copy(), rows=ids, scratch=True)
        _same(twin, kern, p_twin, p_kern, f"sparse apply of {ids}")
    # A checkpoint restore: the state assigned from host arrays, then updated on.
    saved = {k: v.copy() * 0.5 for k, v in twin.slots.items()}
    for st in (twin, kern):
        for k, v in saved.items():
            st.slots[k] = v
    g = _grads(rng, (n, w))
    twin.apply(p_twin, g)
    kern.apply(p_kern, g)
    _same(twin, kern, p_twin, p_kern, "a restore")


def test_held_rows_are_a_pinned_host_copy_of_the_device_rows(dev):
    from geeps.backend import hostcupy
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    st = RuleState("momentum", HYPER["momentum"], rows.shape, dev)
    held = st.hold(rows)
    assert held is not rows and hostcupy.is_pinned(held) and np.array_equal(held, rows)
    assert np.array_equal(dev.to_numpy(st.device.params), rows)
    st.apply(held, np.ones((4, 3), np.float32))
    assert np.array_equal(dev.to_numpy(st.device.params), held)
    # Rows the shard moved to a copy (a reply still being sent) are mirrored again.
    moved = held.copy()
    st.apply(moved, np.ones((4, 3), np.float32))
    assert np.array_equal(dev.to_numpy(st.device.params), moved)
    twin = RuleState("momentum", HYPER["momentum"], rows.shape)
    assert twin.hold(rows) is rows, "on the host the rows are kept as they are"


def test_bad_input_is_refused_before_it_reaches_the_device(dev):
    st = RuleState("adam", HYPER["adam"], (4, 3), dev)
    rows = st.hold(np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="grad must be float32"):
        st.apply(rows, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"grad has shape \(2, 3\), expected \(4, 3\)"):
        st.apply(rows, np.zeros((2, 3), np.float32))
    with pytest.raises(KeyError, match="keeps m, v"):
        st.slots["velocity"] = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="optimizer state 'm'"):
        st.slots["m"] = np.zeros((3, 3), np.float32)


def test_select_rules_names_and_errors(monkeypatch):
    assert select_rules("numpy").name == "numpy"
    monkeypatch.delenv("GEEPS_SERVER_BACKEND", raising=False)
    assert select_rules().name == "numpy", "the default is numpy"
    monkeypatch.setenv("GEEPS_SERVER_BACKEND", "tpu")
    with pytest.raises(ConfigError, match="GEEPS_SERVER_BACKEND='tpu' is invalid"):
        select_rules()
    with pytest.raises(ValueError, match="not one of numpy, cupy, host-cuda, auto"):
        select_rules("gpu")
    monkeypatch.setattr("geeps.backend._gpu_present", lambda: False)
    assert select_rules("auto").name == "numpy"
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(BackendUnavailable, match="host-cuda .* needs a C\\+\\+ compiler"):
        select_rules("host-cuda")


# ---- a shard (ShardState, the server's logic) on the kernels ----------------------------

def _reply(out):
    (_peer, frames), = out
    return json.loads(frames[0])


def _drive(backend, restore_into=None):
    """Two workers, three tables, three clocks: adam dense (one clock by last pushes,
    applied early in chunks), momentum pushed by scattered ids (gather/scatter), sgd
    without clocks (applied as pushes arrive); then a checkpoint round trip into a new
    shard on `restore_into`'s backend and one more clock. Returns (digests, shard)."""
    st = ShardState(0, 2, rule_backend=backend)
    st.send_early = lambda replies: None
    rng = np.random.default_rng(11)
    n, w = 300, 4
    specs = {"dense": ("adam", True), "sparse": ("momentum", True), "async": ("sgd", False)}
    for name, (rule, per_clock) in specs.items():
        init = rng.standard_normal((n, w)).astype(np.float32)
        h = _reply(st.handle(b"p", P.request("create", 1, [init], table=name, n_rows=n,
                                            row_width=w, lo=0, hi=n, rule=rule,
                                            hyper=HYPER[rule], per_clock=per_clock,
                                            init=True)))
        assert h["ok"], h
    for k in (0, 1):
        assert _reply(st.handle(b"p", P.request("hello", 1, worker=k, session=7)))["ok"]
    ids = np.arange(0, n, 3, dtype=np.int64)
    backwards = np.concatenate([ids[::7][::-1], ids[:2]])    # repeats are summed first
    assert len(ids) > MAX_RUNS      # the gather/scatter path
    digests = []

    def clock(st, c, seq):
        for k in (0, 1):
            for a, b in ((0, 150), (150, n)):
                extra = {"last": True} if c == 1 else {}
                h = _reply(st.handle(b"p", P.request(
                    "push", 1, [_grads(rng, (b - a, w))], table="dense", worker=k, session=7,
                    clock=c, seq=seq, rows={"range": [a, b]}, **extra)))
                assert h["ok"], h
                seq += 1
            for table, rows in (("sparse", ids), ("async", backwards)):
                h = _reply(st.handle(b"p", P.request(
                    "push", 1, [rows, _grads(rng, (len(rows), w))], table=table, worker=k,
                    session=7, clock=c, seq=seq, rows={"ids": len(rows)})))
                assert h["ok"], h
                seq += 1
        for k in (0, 1):
            st.handle(b"p", P.request("clock", 1, worker=k, clock=c))
        return seq

    seq = 0
    for c in range(3):
        seq = clock(st, c, seq)
        digests.append(st.digest())
    header, arrays = st.save_state()
    arrays = {k: np.array(v) for k, v in arrays.items()}
    st2 = ShardState(0, 2, rule_backend=restore_into)
    st2.send_early = lambda replies: None
    st2.load_state(3, header, arrays)
    for k in (0, 1):
        assert _reply(st2.handle(b"p", P.request("hello", 1, worker=k, session=7)))["ok"]
    for name, t in st.tables.items():     # the restored state is the saved one
        t2 = st2.tables[name]
        assert t2.rows.tobytes() == t.rows.tobytes() and t2.state.step == t.state.step
        for k in t.state.slots:
            assert t2.state.slots[k].tobytes() == t.state.slots[k].tobytes(), (name, k)
    clock(st2, 3, seq)
    digests.append(st2.digest())
    return digests, st, st2


def test_a_shard_on_the_kernels_equals_the_shard_on_the_twins(dev):
    want, _, _ = _drive(None)
    before = dict(dev.launches)
    got, st, st2 = _drive(dev, restore_into=dev)
    assert got == want, "a shard on the kernels left other rows or optimizer state"
    stats = _reply(st.handle(b"p", P.request("stats", 1)))
    assert stats["rule_backend"] == "host-cuda"
    ran = {k: dev.launches[k] - before[k] for k in dev.launches}
    for kernel in ("sgd_update", "momentum_update", "adam_update", "gather_rows",
                   "scatter_rows"):
        assert ran[kernel] > 0, (kernel, ran)
    assert _reply(ShardState(0, 1).handle(b"p", P.request("stats", 1)))["rule_backend"] \
        == "numpy"
    # Checkpoints move between backends: one written on the twins restores on the
    # kernels (and back) to the same state.
    mixed, _, _ = _drive(None, restore_into=dev)
    assert mixed == want


def test_a_shard_on_a_mutated_kernel_is_caught(monkeypatch):
    """The comparison above can fail: Adam's ((1-b2) g) g rounded as (1-b2) (g g), a
    difference of rounding alone, leaves the shard with other bits."""
    from geeps.backend import hostcupy
    from geeps.backend.kernels import source
    mod = hostcupy.backend_module()
    old, new = "f32_mul(f32_mul(one_minus_b2, gi), gi)", "f32_mul(one_minus_b2, f32_mul(gi, gi))"
    assert source("rules.cu").count(old) == 1
    monkeypatch.setattr(mod, "kernel_source",
                        lambda f: source(f).replace(old, new) if f == "rules.cu" else source(f))
    wrong = mod.CupyBackend()
    want, _, _ = _drive(None)
    got, _, _ = _drive(wrong, restore_into=wrong)
    assert got[0] != want[0], "a shard on a wrong adam kernel still gave the twins' state"
