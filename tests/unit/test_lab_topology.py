"""geeps.lab.topology: the lab as data and commands (no namespace is made here)."""
import pytest

from geeps.lab import topology as T


def test_options_parse_and_name_the_bad_field():
    o = T.parse_options("hosts=auto,rate=200mbit,loss=2.5")
    assert o.link == T.Link(rate="200mbit", loss=2.5)
    assert T.parse_options("") == T.Options()
    for bad, field in (("rate=fast", "rate 'fast'"), ("rate=0mbit", "rate '0mbit'"),
                       ("loss=101", "loss '101'"), ("loss=x", "loss 'x'"),
                       ("speed=1", "unknown key 'speed'"), ("rate", "'rate': expected key=value"),
                       ("hosts=3", "hosts='3'")):
        with pytest.raises(T.LabSpecError) as e:
            T.parse_options(bad)
        assert field in str(e.value), (bad, str(e.value))


def test_rates_in_tc_units():
    assert T.rate_bits("200mbit") == 200_000_000
    assert T.rate_bits("1.5Gbit") == 1_500_000_000
    assert T.Link(rate="1mbit").burst_bytes() == 4 * T.MTU       # 10 ms is less than 4 frames
    assert T.Link(rate="10gbit").burst_bytes() == 10**10 // 8 // 100


def test_names_fit_the_kernel_and_addresses_are_distinct():
    names = [f"worker-{i}" for i in range(1000)]
    lab = T.build("0a1f", names)
    assert all(len(h.outer) <= T.IFNAMSIZ and len(h.inner) <= T.IFNAMSIZ for h in lab.hosts)
    assert len({h.ip for h in lab.hosts}) == 1000 and lab.gateway not in {h.ip for h in lab.hosts}
    assert all(h.ns.startswith("gl-0a1f-") for h in lab.hosts)
    with pytest.raises(T.LabSpecError, match="lab id"):
        T.build("xyz", names)
    with pytest.raises(T.LabSpecError, match="no host 'server-9'"):
        lab.host("server-9")


def test_a_shaped_lossy_lab_shapes_both_ends_and_drops_in_the_host():
    lab = T.build("00ff", ["a", "b"], T.Link(rate="100mbit", loss=5))
    cmds = [" ".join(c) for c in T.setup(lab)]
    a = lab.host("a")
    assert any(c.startswith(f"tc qdisc replace dev {a.outer} root tbf rate 100mbit") for c in cmds)
    assert any(c.startswith(f"ip netns exec {a.ns} tc qdisc replace dev {a.inner} root tbf")
               for c in cmds)
    assert sum("numgen random mod 100 < 5 counter drop" in c for c in cmds) == 4   # 2 hosts x 2
    assert not any("route add default" in c for c in cmds)
    down = [" ".join(c) for c in T.teardown(lab)]
    assert down[-1] == f"ip link delete {lab.bridge}"
    assert f"ip netns delete {a.ns}" in down


def test_full_loss_drops_everything_and_zero_loss_only_clears():
    h = T.build("0001", ["a"]).host("a")
    rules = [c for c in T.loss_rules(h, 100) if "rule" in c]
    assert len(rules) == 2 and all(c[-2:] == ["counter", "drop"] and "numgen" not in c
                                   for c in rules)
    assert T.loss_rules(h, 0) == [["ip", "netns", "exec", h.ns, "nft", "delete", "table",
                                   "inet", T.NFT_TABLE]]


def test_a_replaced_host_gets_a_new_link_with_the_lost_ones_address_and_hardware_address():
    lab = T.build("00ff", ["a", "b"], T.Link(rate="100mbit"))
    a, b = lab.hosts
    assert len({T.mac(lab, a), T.mac(lab, b), T.mac(T.build("0100", ["a"]), a)}) == 3
    cmds = [" ".join(c) for c in T.replace_host(lab, a)]
    # The old link goes first (whatever still runs there is cut off for good), then the
    # host is built as setup() builds it, shaped, with the same addresses.
    assert cmds[:2] == [f"ip link delete {a.outer}", f"ip netns delete {a.ns}"]
    assert cmds[2:] == [" ".join(c) for c in T.host_setup(lab, a)]
    assert f"ip link set {a.inner} address {T.mac(lab, a)}" in cmds
    assert any(a.ip in c for c in cmds) and not any(b.ns in c for c in cmds)
    assert any(c.startswith(f"tc qdisc replace dev {a.outer} root tbf") for c in cmds)


def test_a_host_added_to_a_running_lab_comes_next_in_line():
    lab = T.build("00ab", ["server-0", "server-1", "worker-0"])
    bigger = T.with_host(lab, "server-2")
    assert bigger.hosts[:3] == lab.hosts
    new = bigger.host("server-2")
    assert new.index == 3 and new.ip == lab.hosts[-1].ip.rsplit(".", 1)[0] + ".5"
    assert len({h.ip for h in bigger.hosts}) == len({h.outer for h in bigger.hosts}) == 4
    assert T.teardown(bigger)[-2] == ["ip", "link", "delete", new.outer]
    with pytest.raises(T.LabSpecError, match="already has a host 'server-1'"):
        T.with_host(lab, "server-1")
