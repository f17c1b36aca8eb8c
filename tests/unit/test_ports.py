"""Free ports for servers that tests and benchmarks start."""
from geeps.wire.ports import free_ports


def test_free_ports_are_distinct():
    # Picked one by one, the kernel may hand a port just closed straight back.
    ports = free_ports(32)
    assert len(set(ports)) == 32 and all(0 < p < 65536 for p in ports)
