"""What travels between clients and servers, and how.

`protocol` is the message format (a JSON header frame, then raw row frames) and every
check of it; `transport` opens the ZeroMQ sockets, with `curve` (CurveZMQ keys) when
the job is secure; `memtune` keeps the allocator from page-faulting on large frames;
`ports` finds free TCP ports. Both sides import from here; neither side's state does.

The names below load on first use: the operator imports `curve` alone, and its image
has no numpy for `protocol` to import.
"""
import importlib

_EXPORTS = {
    "CHUNK_BYTES": "protocol", "ProtocolError": "protocol",
    "bind_router": "transport", "connect_dealer": "transport", "security_note": "transport",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"geeps.wire.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
