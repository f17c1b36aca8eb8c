"""What travels between clients and servers, and how.

`protocol` is the message format (a JSON header frame, then raw row frames) and every
check of it; `transport` opens the ZeroMQ sockets, with `curve` (CurveZMQ keys) when
the job is secure; `memtune` keeps the allocator from page-faulting on large frames;
`ports` finds free TCP ports. Both sides import from here; neither side's state does.
"""
from geeps.wire.protocol import CHUNK_BYTES, ProtocolError
from geeps.wire.transport import bind_router, connect_dealer, security_note

__all__ = ["CHUNK_BYTES", "ProtocolError", "bind_router", "connect_dealer", "security_note"]
