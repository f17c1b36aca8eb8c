"""geeps.client.recovery.Rollback: the steps of a rollback after a shard restart,
without sockets (the I/O thread sends what they ask for)."""
import pytest

from geeps.client.handles import Handle
from geeps.client.recovery import Done, Failed, Restore, Rollback, State
from geeps.errors import GeepsError, RolledBack


def ok(**kw):
    return dict(ok=True, **kw)


def rollback(n=2):
    doomed = [Handle(1, lambda p: p) for _ in range(2)]
    return Rollback("inc-7", "server 1 (x) restarted", n, list(doomed)), doomed


def test_the_newest_common_checkpoint_is_restored_then_the_calls_roll_back():
    rb, doomed = rollback()
    assert rb.state is State.ASKING
    assert rb.on_checkpoints(0, "server 0", ok(clocks=[2, 4, 6])) is None
    assert rb.on_restored(0, "server 0", ok()) is None       # not asked yet: ignored
    step = rb.on_checkpoints(1, "server 1", ok(clocks=[4, 6, 8]))
    assert step == Restore(6, "inc-7") and rb.state is State.RESTORING
    assert rb.on_checkpoints(1, "server 1", ok(clocks=[1])) is None   # a late duplicate
    late = Handle(1, lambda p: p)
    rb.doom(late)
    assert rb.on_restored(1, "server 1", ok()) is None
    assert rb.on_restored(1, "server 1", ok()) is None        # the same shard twice
    assert rb.on_restored(0, "server 0", ok()) == Done(6) and rb.state is State.DONE
    rb.release()
    for h in doomed + [late]:
        with pytest.raises(RolledBack) as e:
            h.wait(0)
        assert e.value.clock == 6 and "server 1 (x) restarted" in str(e.value)


def test_no_common_checkpoint_fails_naming_each_shards_clocks():
    rb, doomed = rollback()
    rb.on_checkpoints(0, "server 0", ok(clocks=[2]))
    step = rb.on_checkpoints(1, "server 1", ok(clocks=[]))
    assert isinstance(step, Failed) and rb.state is State.FAILED
    assert "server 0: [2]" in step.why and "server 1: none" in step.why
    with pytest.raises(ValueError):
        rb.release()                    # not done: the caller must say what failed
    err = GeepsError("fatal")
    rb.release(err)
    for h in doomed:
        with pytest.raises(GeepsError, match="fatal"):
            h.wait(0)


@pytest.mark.parametrize("phase", ["checkpoints", "restore"])
def test_a_refusal_fails_the_rollback_naming_the_shard(phase):
    rb, _ = rollback(n=1)
    if phase == "restore":
        assert rb.on_checkpoints(0, "server 0", ok(clocks=[3])) == Restore(3, "inc-7")
        step = rb.on_restored(0, "server 0", {"ok": False, "error": "disk"})
    else:
        step = rb.on_checkpoints(0, "server 0", {"ok": False, "error": "disk"})
    assert step == Failed("server 0: disk") and rb.state is State.FAILED
    assert rb.on_checkpoints(0, "server 0", ok(clocks=[3])) is None
