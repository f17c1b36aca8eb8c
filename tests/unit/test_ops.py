"""Recording a virtual iteration and checking real iterations against it."""
import numpy as np
import pytest

from geeps.worker.ops import Cursor, Recorder, SequenceError
from geeps.tables import Table

T = Table("w", 100, 8, "sgd")
U = Table("u", 10, 4, "add")


def two_clock_cycle():
    rec = Recorder()
    for rows in (range(0, 10), np.array([50, 3, 7])):
        a = rec.read(T, rows)
        x = rec.local_access("act", 64)
        rec.post_local_access(x)
        u = rec.pre_update(T, rows)
        rec.update(u)
        rec.post_read(a)
        rec.clock()
    return rec.finish()


def test_recording_builds_the_cycle_in_order():
    cyc = two_clock_cycle()
    assert cyc.n_clocks == 2
    assert [cyc.describe(e) for e in cyc.clocks[1]] == [
        "read(table 'w', 3 rows)", "local_access('act', 64 bytes)",
        "post_local_access(of operation 4: local_access('act', 64 bytes))",
        "pre_update(table 'w', 3 rows)",
        "update(of operation 5: pre_update(table 'w', 3 rows))",
        "post_read(of operation 3: read(table 'w', 3 rows))"]
    assert cyc.ops[0].run == (0, 10) and cyc.ops[0].nbytes == 10 * 32
    assert list(cyc.ops[3].rows) == [50, 3, 7] and not cyc.ops[3].rows.flags.writeable
    assert cyc.tables["w"].row_bytes == 32


def walk(cur, rows, name="act", nbytes=64):
    a = cur.call("read", "w", rows)
    x = cur.call("local", name=name, nbytes=nbytes)
    cur.post("local", x.id)
    u = cur.call("pre_update", "w", rows)
    cur.post("pre_update", u.id)
    cur.post("read", a.id)
    return cur.clock()


def test_real_iterations_repeat_the_cycle_from_any_clock():
    cyc = two_clock_cycle()
    cur = Cursor(cyc, clock=5)              # a worker rejoining at clock 5: cycle position 1
    assert walk(cur, np.array([50, 3, 7])) == 0
    assert walk(cur, range(0, 10)) == 1
    assert walk(cur, [50, 3, 7]) == 0       # a list is fine: same rows


@pytest.mark.parametrize("deviation,expected,called", [
    (lambda c: c.call("pre_update", "w", range(0, 10)),
     "expected read(table 'w', 10 rows)", "called pre_update(table 'w', 10 rows)"),
    (lambda c: c.call("read", "u", range(0, 10)),
     "expected read(table 'w', 10 rows)", "called read(table 'u', 10 rows)"),
    (lambda c: c.call("read", "w", range(0, 11)),
     "expected read(table 'w', 10 rows)", "called read(table 'w', 11 rows)"),
    (lambda c: c.call("read", "w", range(1, 11)),
     "expected read(table 'w', 10 rows)", "10 rows) with different rows"),
    (lambda c: c.clock(), "expected read(table 'w', 10 rows)", "called clock()"),
])
def test_a_deviation_names_the_operation_and_what_was_expected(deviation, expected, called):
    cur = Cursor(two_clock_cycle())
    with pytest.raises(SequenceError) as e:
        deviation(cur)
    msg = str(e.value)
    assert msg.startswith("operation 0 of clock 0 of the recorded cycle")
    assert expected in msg and called in msg


def test_deviations_later_in_the_cycle():
    cur = Cursor(two_clock_cycle())
    a = cur.call("read", "w", range(0, 10))
    with pytest.raises(SequenceError, match=r"operation 1 of clock 0.*expected "
                       r"local_access\('act', 64 bytes\).*called local_access\('act', 128"):
        cur.call("local", name="act", nbytes=128)
    cur.call("local", name="act", nbytes=64)
    with pytest.raises(SequenceError, match=r"expected post_local_access\(of operation 1.*"
                       r"called post_read\(of operation 0\)"):
        cur.post("read", a.id)


def test_recording_refuses_misuse_clearly():
    rec = Recorder()
    with pytest.raises(ValueError, match="row 3 appears twice"):
        rec.pre_update(T, [3, 1, 3])
    with pytest.raises(IndexError, match=r"rows of table 'w' must lie in 0\.\.99 \(got 5\.\.100\)"):
        rec.read(T, range(5, 101))
    with pytest.raises(TypeError, match="must be integers"):
        rec.read(T, np.array([1.5]))
    with pytest.raises(ValueError, match="names no rows"):
        rec.read(T, [])
    with pytest.raises(ValueError, match="multiple of 4"):
        rec.local_access("a", 6)
    x = rec.local_access("a", 8)
    with pytest.raises(SequenceError, match="'a' is already open"):
        rec.local_access("a", 8)
    rec.post_local_access(x)
    with pytest.raises(ValueError, match="recorded with 8 bytes, now 16"):
        rec.local_access("a", 16)
    r = rec.read(T, [1])
    with pytest.raises(SequenceError, match=r"clock\(\) with operations still open: "
                                            r"read\(table 'w', 1 rows\) \(operation 1\)"):
        rec.clock()
    with pytest.raises(SequenceError, match="operation 7 was never recorded"):
        rec.post_read(7)
    with pytest.raises(SequenceError, match="is not an open pre_update"):
        rec.update(r)
    rec.post_read(r)
    with pytest.raises(SequenceError, match="must end with clock"):
        rec.finish()
    with pytest.raises(SequenceError, match="recorded no clock"):
        Recorder().finish()
