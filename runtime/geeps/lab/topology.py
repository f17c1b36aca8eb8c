"""The lab as data: hosts, names, addresses and the commands that build, fault and remove
it (pure: nothing here runs a command; geeps.lab.netns does).

Each simulated host is a network namespace with one link: a veth pair whose outer end
sits on the lab's bridge, shaped both ways by a tbf qdisc (tbf and htb are what the
kernels we run on have; netem is not, so the lab adds no delay). Loss is an nftables
rule inside the host (`numgen random mod 100 < N drop`), a cut is the link set down.

Every name starts with PREFIX and the lab's id, so a leftover of a killed run is found
by name and removed by the next one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

PREFIX = "gl"                   # namespaces "gl-<id>-<host>", links "gl<id>...": ours only
ID_LEN = 4                      # hex digits of a lab id: 65,536 labs, names stay short
IFNAMSIZ = 15                   # the kernel's limit on an interface name
MAX_HOSTS = 250 * 256           # addresses of a /16 the lab hands out (.0.2 upwards)
NFT_TABLE = "geeps_lab"         # the nftables table a lossy host drops packets in
MTU = 1500
RATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit)$")
_RATE_UNIT = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}


class LabSpecError(ValueError):
    """A --lab option or a fault the lab cannot apply, naming the field."""


def rate_bits(rate: str) -> int:
    """'200mbit' -> 200_000_000 (tc's units: bit, kbit, mbit, gbit per second)."""
    m = RATE_RE.match(rate.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise LabSpecError(f"rate {rate!r}: expected a positive number with bit, kbit, mbit "
                           "or gbit, e.g. 200mbit")
    return int(float(m.group(1)) * _RATE_UNIT[m.group(2)])


def loss_percent(text: str | float) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = -1.0
    if not 0 <= v <= 100:
        raise LabSpecError(f"loss {text!r}: expected a percentage from 0 to 100")
    return v


@dataclass(frozen=True)
class Link:
    rate: str | None = None     # tc rate both ways, e.g. "200mbit"; None = unshaped
    loss: float = 0.0           # percent of packets dropped, each way

    def burst_bytes(self) -> int:
        """tbf's bucket: 10 ms at the rate, at least a few full frames (a smaller bucket
        than one frame would never pass it)."""
        return max(rate_bits(self.rate) // 8 // 100, 4 * MTU) if self.rate else 0


@dataclass(frozen=True)
class Options:
    """`--lab hosts=auto,rate=200mbit,loss=0,extra-servers=0`."""
    link: Link = field(default_factory=Link)
    hosts: str = "auto"         # auto: one host per process of the job
    extra_servers: int = 0      # server-only hosts beyond the job's own (kept for the bench)


def parse_options(text: str) -> Options:
    opts = Options()
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise LabSpecError(f"--lab {part!r}: expected key=value (hosts, rate, loss)")
        key = key.strip()
        if key == "rate":
            rate_bits(value)
            opts = replace(opts, link=replace(opts.link, rate=value.strip().lower()))
        elif key == "loss":
            opts = replace(opts, link=replace(opts.link, loss=loss_percent(value)))
        elif key == "hosts":
            if value.strip() != "auto":
                raise LabSpecError(f"--lab hosts={value!r}: only auto (one host per process)")
        else:
            raise LabSpecError(f"--lab: unknown key {key!r} (hosts, rate, loss)")
    return opts


@dataclass(frozen=True)
class Host:
    name: str                   # the process it runs, e.g. "server-0", "worker-1"
    index: int
    ns: str                     # network namespace
    outer: str                  # veth end on the bridge, in the root namespace
    inner: str                  # veth end inside the namespace
    ip: str


@dataclass(frozen=True)
class Lab:
    id: str
    hosts: tuple[Host, ...]
    bridge: str
    gateway: str                # the bridge's address: the launcher and Prometheus reach
    prefix_len: int             # the hosts' metrics through it
    link: Link

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabSpecError(f"no host {name!r} in lab {self.id} "
                           f"(hosts: {', '.join(h.name for h in self.hosts)})")


def subnet(lab_id: str) -> tuple[int, int]:
    """Second and third octet base of the lab's 10.x.0.0/16: labs at once do not overlap
    unless their ids collide modulo 100."""
    return 100 + int(lab_id, 16) % 100, 0


def build(lab_id: str, names: list[str], link: Link = Link()) -> Lab:
    if not re.fullmatch(r"[0-9a-f]{%d}" % ID_LEN, lab_id):
        raise LabSpecError(f"lab id {lab_id!r}: {ID_LEN} hex digits")
    if len(names) > MAX_HOSTS:
        raise LabSpecError(f"{len(names)} hosts: at most {MAX_HOSTS} in one lab")
    b, _ = subnet(lab_id)
    return Lab(id=lab_id, hosts=tuple(_host(lab_id, i, name) for i, name in enumerate(names)),
               bridge=f"{PREFIX}{lab_id}br", gateway=f"10.{b}.0.1", prefix_len=16, link=link)


def with_host(lab: Lab, name: str) -> Lab:
    """`lab` with one more host, next in line (a server that joins a running job gets a
    host of its own, as a new pod gets a node)."""
    if any(h.name == name for h in lab.hosts):
        raise LabSpecError(f"lab {lab.id} already has a host {name!r}")
    if len(lab.hosts) >= MAX_HOSTS:
        raise LabSpecError(f"lab {lab.id} has {len(lab.hosts)} hosts: at most {MAX_HOSTS}")
    return replace(lab, hosts=lab.hosts + (_host(lab.id, len(lab.hosts), name),))


def _host(lab_id: str, i: int, name: str) -> Host:
    b, _ = subnet(lab_id)
    n = i + 2                       # .0.1 is the bridge
    h = Host(name=name, index=i, ns=f"{PREFIX}-{lab_id}-{name}",
             outer=f"{PREFIX}{lab_id}o{i}", inner=f"{PREFIX}{lab_id}i{i}",
             ip=f"10.{b}.{n // 256}.{n % 256}")
    assert len(h.outer) <= IFNAMSIZ and len(h.inner) <= IFNAMSIZ, h
    return h


# ---- commands ----------------------------------------------------------------------------

Command = list[str]


def _in(ns: str, *argv: str) -> Command:
    return ["ip", "netns", "exec", ns, *argv]


def shape(dev: str, link: Link, ns: str | None = None) -> list[Command]:
    """tbf on `dev`'s egress, or nothing (and any old qdisc removed) when unshaped."""
    if link.rate is None:
        cmd = ["tc", "qdisc", "del", "dev", dev, "root"]
        return [_in(ns, *cmd) if ns else cmd]
    cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", link.rate,
           "burst", str(link.burst_bytes()), "latency", "100ms"]
    return [_in(ns, *cmd) if ns else cmd]


def loss_rules(host: Host, percent: float) -> list[Command]:
    """Drop `percent` of the packets entering and leaving the host (0: no rule)."""
    cmds = [_in(host.ns, "nft", "delete", "table", "inet", NFT_TABLE)]
    if percent <= 0:
        return cmds
    n = int(round(percent))
    cmds.append(_in(host.ns, "nft", "add", "table", "inet", NFT_TABLE))
    for chain, hook in (("in", "input"), ("out", "output")):
        cmds.append(_in(host.ns, "nft", "add", "chain", "inet", NFT_TABLE, chain,
                        f"{{ type filter hook {hook} priority 0 ; }}"))
        # nft's numgen compares below the modulus only: 100% is every packet, a partition
        sample = [] if n >= 100 else ["numgen", "random", "mod", "100", "<", str(n)]
        cmds.append(_in(host.ns, "nft", "add", "rule", "inet", NFT_TABLE, chain,
                        *sample, "counter", "drop"))
    return cmds


def setup(lab: Lab) -> list[Command]:
    cmds: list[Command] = [
        ["ip", "link", "add", lab.bridge, "type", "bridge"],
        ["ip", "addr", "add", f"{lab.gateway}/{lab.prefix_len}", "dev", lab.bridge],
        ["ip", "link", "set", lab.bridge, "up"],
    ]
    for h in lab.hosts:
        cmds += host_setup(lab, h)
    return cmds


def host_setup(lab: Lab, h: Host) -> list[Command]:
    """One host: its namespace and its link to the bridge, shaped as the lab's links."""
    cmds = [
        ["ip", "netns", "add", h.ns],
        ["ip", "link", "add", h.outer, "type", "veth", "peer", "name", h.inner],
        ["ip", "link", "set", h.inner, "address", mac(lab, h)],
        ["ip", "link", "set", h.inner, "netns", h.ns],
        ["ip", "link", "set", h.outer, "master", lab.bridge],
        ["ip", "link", "set", h.outer, "up"],
        _in(h.ns, "ip", "link", "set", "lo", "up"),
        _in(h.ns, "ip", "addr", "add", f"{h.ip}/{lab.prefix_len}", "dev", h.inner),
        _in(h.ns, "ip", "link", "set", h.inner, "up"),
    ]   # no default route: a host reaches the lab's /16 and nothing beyond it
    if lab.link.rate:
        cmds += shape(h.outer, lab.link) + shape(h.inner, lab.link, h.ns)
    if lab.link.loss > 0:
        cmds += loss_rules(h, lab.link.loss)[1:]
    return cmds


def mac(lab: Lab, h: Host) -> str:
    """The host's hardware address, from the lab and its index: the same for a host
    that replaces a lost one, so its neighbours' ARP entries for its address stay right
    (a new address would go unanswered until they expire, some 30 s)."""
    return "02:" + ":".join(f"{b:02x}" for b in (int(lab.id, 16).to_bytes(2, "big")
                                                 + (h.index + 1).to_bytes(3, "big")))


def replace_host(lab: Lab, h: Host) -> list[Command]:
    """The host is lost for good and a fresh one takes its name and address (a pod
    rescheduled on another node behind the same Service): its link is deleted, which
    cuts whatever still runs in the old namespace off for good (the caller kills it),
    and a new namespace with a new link comes up empty."""
    return [["ip", "link", "delete", h.outer], ["ip", "netns", "delete", h.ns],
            *host_setup(lab, h)]


def teardown(lab: Lab) -> list[Command]:
    """Deleting a namespace deletes the veth pair in it; the bridge goes last."""
    return [["ip", "netns", "delete", h.ns] for h in lab.hosts] + \
        [["ip", "link", "delete", h.outer] for h in lab.hosts] + \
        [["ip", "link", "delete", lab.bridge]]


def cut(host: Host) -> list[Command]:
    return [["ip", "link", "set", host.outer, "down"]]


def restore(host: Host) -> list[Command]:
    return [["ip", "link", "set", host.outer, "up"]]


def set_rate(host: Host, link: Link) -> list[Command]:
    return shape(host.outer, link) + shape(host.inner, link, host.ns)
