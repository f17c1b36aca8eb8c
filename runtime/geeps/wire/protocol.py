"""Wire format between clients (DEALER) and server shards (ROUTER).

A message is a multipart ZeroMQ message: frame 0 is a small JSON header, the rest are
raw payloads: row ids as little-endian int64, row values as little-endian float32,
row-major. Payloads are never pickled; both ends wrap frames with np.frombuffer
(zero-copy). Every request header carries `op` and `id`; the reply echoes `id` with
`ok: true` (plus op-specific fields and payload frames) or `ok: false, error: "..."`.

Requests (fields beyond op/id):
    hello   worker, session                              -> num_workers, clocks
    create  table, n_rows, row_width, lo, hi, rule, hyper, per_clock, init (bool)
            [+ values frame for rows lo..hi when init]
    open    table                                        -> the table's spec (parks until created)
    push    table, worker, session, clock, seq, rows     + [ids frame] + values frame
            [last: true: no more pushes to these rows in this clock (range pushes,
            BSP/SSP); once every worker's last push of the same rows is in, the shard
            updates them and answers the next clock's reads of them before the clock
            ends; a read that may already see that clock (SSP, or a worker reading
            between its last pushes and its clock) can get such rows fresher than it
            asked for. Pushing to them again in the clock is an error]
    clock   worker, clock                                -> min_clock
    pull    table, rows, need                            + [ids frame] -> clock + values frame
    ping | stats | digest                                -> (ping: inc, base)
    checkpoints                                          -> clocks: valid checkpoints here
    restore clock, cause                                 -> roll back to that checkpoint
    leave   worker                                       -> the worker is done (a worker
                                                            hosting a shard serves on
                                                            until every worker left)
    batch   parts: [request header, ...], nf: [payload frames of each part, ...]
            + every part's payload frames, in order      -> parts, nf: the replies
Batch: several requests to one shard in one message, handled in order exactly as if
sent one by one (a part that is malformed gets its own error; the others still
apply). Not atomic, but every part is validated completely, its values included,
before it changes anything: a refused part (a bad field, a non-finite hyper-parameter
in a create, a push refused for NaN/Inf) changes nothing, and the parts before it
stay applied. A clock of a worker whose push of that clock was refused for non-finite
values is refused too, so a clock never applies without one of its pushes. The reply holds, in order, every reply to the sender that the parts produced
(its parked reads released by them too); parked parts are answered later, alone. A
client batches what is queued for a shard when it sends (a step's pushes, clock and
refresh): one message instead of three per shard per clock, which on a small model
is most of the time a clock costs. Parts are never batches themselves.
Requests of a timeline (TIMELINE_OPS: create, open, push, clock, pull) may carry
`inc`, the server incarnation the client knows; a server with another incarnation (it
restarted, or rolled back) refuses them with `restarted: true, inc, base`.
A read (or open) that must wait is parked and answered `ok: true, waiting: true` (no
data) at once, and again on each retry while parked; its values follow when ready.
A push that arrives ahead of its turn in the rank-order sum while the shard's buffer
for those is full (GEEPS_PUSH_BUFFER) is answered `ok: true, waiting: true, busy: true`
and not kept; so are the same worker's later pushes and clock, until it sends that
push again. The shard says when: a reply `waiting: true, resend: true` with the id of
the push that waits (clients also retry on their own after a while).
Limits per client connection (issue 23; GEEPS_* variables, see geeps.job.env): a read
parks at most GEEPS_WAIT_TIMEOUT seconds (then an error naming it), at most
GEEPS_PEER_PARKED of one client's reads park at once, and parked reads go when their
client disconnects. A client that leaves GEEPS_PEER_QUEUE replies (or
GEEPS_PEER_REPLY_BYTES of large ones) unread has further replies dropped and its
requests refused, until a refusal naming those limits reaches it.
Membership (issue 16, geeps.job.membership): which server holds which rows, with an
epoch. Requests of a timeline carry `epoch`, the membership epoch the client routed
them by. A shard with a newer one refuses them, changing nothing, with `ok: false,
stale: true, epoch, membership` (the client adopts it and sends the request to the
rows' holders there); one with an older one refuses them with `behind: true, epoch`
(the coordinator's update is on its way: the client sends it again shortly; refused
rather than parked, so a shard holds nothing for a membership it may never see).
    membership  [membership: {...}]          -> epoch, ready, membership
        With the field (from the coordinator): adopted if newer (the same again is
        answered as is; an older one, or another of the same epoch, is refused), and
        the shard fetches the rows it must now hold. `ready`: it holds everything the
        membership gives it, catching-up included. Without: the current membership
        (clients ask it of another server when one goes silent).
    ping        also answers epoch, ready and durable (the coordinator's heartbeat).
    fetch       (server to server) epoch [, table, lo, hi]
        Without a table: `tables`, every table's spec, and `done` (the workers'
        clocks). With: rows [lo, hi) as `pieces` [{lo, hi, next, step, slots}], each
        the rows then each rule slot (float32, rows x width), as of clock `next`, and
        `spec`. The fetcher then follows the primary's stream like a replica.
    replicate   (primary to replica) epoch, origin, table, lo, hi, clock, counted, runs
                + starts frame + ends frame (runs int64, relative to lo) + values
        A clock's aggregated sum of rows [lo, hi), the runs pushed to, after the
        primary applied it; the replica applies the same rule to it (same bits under
        BSP) -> acked: clock. The primary answers reads of the next clock only once
        every replica (and catcher-up) acked: `durable`.
Durability and redo: replies to clock, pull and ping say `durable`, the clock before
which everything this shard serves is applied on every holder. A client keeps its
pushes of a BSP/SSP clock until then. Where rows change primary (a failure, or a
promote), the new primary redoes the clock its predecessor had not made durable: each
client sends the pushes of that clock the old primary had answered again (`redo:
true`; one of a clock applied there already is dropped as a duplicate), and then
`clock` with `redo: true` to every server, once it finished the clock and has no push
of the older membership unanswered. The promoted rows count a worker's clock only from
its redo clock.
Pushes holding NaN or Inf follow GEEPS_NONFINITE (spec.nonFinite): reject (an error
naming worker, table, clock and count), skip (`ok: true, skipped: n`) or apply.
`rows` is {"range": [lo, hi]} (global row ids, contiguous) or {"ids": n} (an ids frame
of n int64 follows the header), or, in a push only, {"sparse": [nnz, lo, hi]}.
Sparse pushes (what a push filter sends, geeps.tables.filters): rows [lo, hi) of the
table, all on the receiving shard, and two payload frames: nnz offsets as
little-endian uint32, each (row - lo) * row_width + column, strictly increasing (no
duplicates) and below (hi - lo) * row_width; then nnz float32 values, one per offset.
A shard turns the frame at its entry into the rows it touches, each a dense row of
deltas (zero where no offset names it), and from there treats it as a push of those
rows by id: the same non-finite policy, sequence numbers and clocks. A frame that
breaks any of these rules (length mismatch, offsets out of range, unsorted or
repeated) is refused naming it, before anything changes.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

VERSION = 1
MAX_HEADER = 64 * 1024          # bytes; a header is a few hundred bytes at most
OPS = ("hello", "create", "open", "push", "clock", "pull", "ping", "stats", "digest",
       "checkpoints", "restore", "leave", "batch", "membership", "replicate", "fetch")
# The requests that build on the state of one incarnation of a shard. A client tags
# them with the incarnation it knows (`inc`) and a shard refuses them when that is not
# its own: after a restart or a rollback they would apply to state that lost what
# they build on. The other requests are how a client finds that out and rolls back
# (hello, ping, checkpoints, restore), or do not depend on it: they must get through.
TIMELINE_OPS = ("create", "open", "push", "clock", "pull")
MAX_PARTS = 256                 # requests in one batch


# Large pushes and pulls travel as requests of at most this many bytes of values.
# ZeroMQ receives every message into a fresh malloc'd buffer; glibc serves blocks this
# size from its heap (reused, see memtune) but maps blocks above its mmap threshold
# (32 MiB at most) anew each time, and the kernel then zero-fills every page on first
# touch (bench/bench_sync.py prints the echo's time in one message over 4 MiB ones).
# Servers apply updates in blocks of the same rows, answering each chunk's pull as
# soon as its block is done.
CHUNK_BYTES = 4 << 20


def chunk_rows(row_width: int) -> int:
    """Rows per chunk of a table `row_width` floats wide."""
    return max(1, CHUNK_BYTES // (row_width * 4))


class ProtocolError(ValueError):
    """A message that breaks the wire format; the text names the frame or field."""


try:        # A header costs orjson a tenth of what it costs json; a clock makes dozens.
    import orjson as _orjson
except ImportError:         # a declared dependency; without it json does the same, slower
    _orjson = None
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_header(header: dict) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(header)
    return _ENCODER.encode(header).encode()


def _loads(raw: bytes):
    if _orjson is not None:
        try:
            return _orjson.loads(raw)
        except ValueError:
            pass    # what orjson refuses but JSON allows (NaN, huge integers): json decides
    return json.loads(raw)


def request(op: str, rid: int, payload: Sequence = (), **fields) -> list:
    return [encode_header({"v": VERSION, "op": op, "id": rid, **fields}), *payload]


def reply_ok(rid: Any, payload: Sequence = (), **fields) -> list:
    return [encode_header({"id": rid, "ok": True, **fields}), *payload]


def reply_error(rid: Any, error: str, **fields) -> list:
    """A refusal; `fields` say more to the client than the text (stale, behind, ...)."""
    return [encode_header({"id": rid, "ok": False, **fields, "error": error})]


def batch(rid: int, parts: Sequence[list]) -> list:
    """One message of several requests: each part is [encoded header, *payload]."""
    return _splice({"v": VERSION, "op": "batch", "id": rid}, parts)


def reply_batch(rid: Any, parts: Sequence[list]) -> list:
    """One message of several replies, as `batch`."""
    return _splice({"id": rid, "ok": True}, parts)


def _splice(head: dict, parts: Sequence[list]) -> list:
    # The parts' headers are already encoded: spliced in as they are.
    raw = encode_header(dict(head, nf=[len(p) - 1 for p in parts]))
    raw = raw[:-1] + b',"parts":[' + b",".join(p[0] for p in parts) + b"]}"
    return [raw, *(f for p in parts for f in p[1:])]


def batch_parts(header: dict, frames: Sequence) -> list[tuple[dict, list]]:
    """The (header, payload frames) of each part of a batch, or ProtocolError naming
    what does not fit. frames[0] is the batch's own header frame."""
    parts, nf = header.get("parts"), header.get("nf")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise ProtocolError("header field 'parts' must be a list of request headers")
    if not 1 <= len(parts) <= MAX_PARTS:
        raise ProtocolError(f"header field 'parts': a batch holds 1..{MAX_PARTS} requests "
                            f"(got {len(parts)})")
    if (not isinstance(nf, list) or len(nf) != len(parts)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in nf)):
        raise ProtocolError("header field 'nf' must list each part's payload frame count")
    if sum(nf) != len(frames) - 1:
        raise ProtocolError(f"batch: 'nf' counts {sum(nf)} payload frames, the message has "
                            f"{len(frames) - 1}")
    out, at = [], 1
    for p, n in zip(parts, nf):
        out.append((p, list(frames[at:at + n])))
        at += n
    return out


def replies(header: dict, frames: Sequence) -> list[tuple[dict, list]]:
    """The (header, payload frames) of each reply a message holds: one, or a batch's."""
    return batch_parts(header, frames) if "parts" in header else [(header, list(frames[1:]))]


def decode_header(frame) -> dict:
    raw = bytes(frame)
    if len(raw) > MAX_HEADER:
        raise ProtocolError(f"frame 0 (header): {len(raw)} bytes exceeds {MAX_HEADER}")
    try:
        header = _loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("frame 0 (header): not JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame 0 (header): not a JSON object")
    return header


def field(header: dict, name: str, kind: type | tuple, *, minimum: int | None = None):
    """A header field of the given type, or ProtocolError naming it."""
    if name not in header:
        raise ProtocolError(f"header field {name!r} is missing")
    v = header[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds:
        raise ProtocolError(f"header field {name!r} must be {kinds[0].__name__} (got {v!r})")
    if not isinstance(v, kinds):
        raise ProtocolError(f"header field {name!r} must be {kinds[0].__name__} (got {v!r:.40})")
    if minimum is not None and v < minimum:
        raise ProtocolError(f"header field {name!r} must be >= {minimum} (got {v})")
    return v


def rows_field(header: dict, n_rows: int) -> tuple[str, Any]:
    """('range', (lo, hi)) or ('ids', n), checked against the table's global size."""
    rows = header.get("rows")
    if not isinstance(rows, dict) or len(rows) != 1:
        raise ProtocolError("header field 'rows' must be {'range': [lo, hi]} or {'ids': n}")
    if "range" in rows:
        r = rows["range"]
        if (not isinstance(r, list) or len(r) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
            raise ProtocolError("header field 'rows.range' must be [lo, hi] integers")
        lo, hi = r
        if not 0 <= lo <= hi <= n_rows:
            raise ProtocolError(f"header field 'rows.range' [{lo}, {hi}] outside table rows "
                                f"0..{n_rows}")
        return "range", (lo, hi)
    if "ids" in rows:
        n = rows["ids"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ProtocolError("header field 'rows.ids' must be a count >= 0")
        return "ids", n
    if "sparse" in rows:
        r = rows["sparse"]
        if (not isinstance(r, list) or len(r) != 3
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
            raise ProtocolError("header field 'rows.sparse' must be [nnz, lo, hi] integers")
        nnz, lo, hi = r
        if not 0 <= lo <= hi <= n_rows:
            raise ProtocolError(f"header field 'rows.sparse' rows [{lo}, {hi}] outside table "
                                f"rows 0..{n_rows}")
        if nnz < 0:
            raise ProtocolError("header field 'rows.sparse': nnz must be >= 0")
        return "sparse", (nnz, lo, hi)
    raise ProtocolError("header field 'rows' must hold 'range', 'ids' or 'sparse'")


SPARSE_OFFSET = np.dtype("<u4")


def sparse_frames(offsets_frame, values_frame_, index: int, nnz: int, n_rows: int,
                  row_width: int) -> tuple[np.ndarray, np.ndarray]:
    """The (offsets, values) of a sparse push over `n_rows` rows of `row_width`
    (frames `index` and `index + 1`), or ProtocolError naming the frame at fault."""
    if n_rows * row_width > 2**32:
        raise ProtocolError(f"header field 'rows.sparse': {n_rows} rows x {row_width} "
                            "exceed the uint32 offsets of a sparse frame")
    ob, vb = memoryview(offsets_frame), memoryview(values_frame_)
    if ob.nbytes != nnz * 4:
        raise ProtocolError(f"frame {index} (sparse offsets): expected {nnz} uint32 = "
                            f"{nnz * 4} bytes, got {ob.nbytes}")
    if vb.nbytes != nnz * 4:
        raise ProtocolError(f"frame {index + 1} (sparse values): expected {nnz} float32 = "
                            f"{nnz * 4} bytes, got {vb.nbytes}")
    offsets = np.frombuffer(ob, dtype=SPARSE_OFFSET)
    if nnz > 1 and not (np.diff(offsets.astype(np.int64)) > 0).all():
        raise ProtocolError(f"frame {index} (sparse offsets): offsets must be strictly "
                            "increasing (sorted, no duplicates)")
    if nnz and int(offsets[-1]) >= n_rows * row_width:
        raise ProtocolError(f"frame {index} (sparse offsets): offset {int(offsets[-1])} "
                            f"outside the {n_rows} x {row_width} values of the rows")
    return offsets, np.frombuffer(vb, dtype="<f4")


def ids_frame(frame, index: int, n: int) -> np.ndarray:
    buf = memoryview(frame)
    if buf.nbytes != n * 8:
        raise ProtocolError(f"frame {index} (row ids): expected {n} int64 = {n * 8} bytes, "
                            f"got {buf.nbytes}")
    return np.frombuffer(buf, dtype="<i8")


def values_frame(frame, index: int, n_rows: int, row_width: int) -> np.ndarray:
    buf = memoryview(frame)
    want = n_rows * row_width * 4
    if buf.nbytes != want:
        raise ProtocolError(f"frame {index} (values): expected {n_rows} rows x {row_width} "
                            f"float32 = {want} bytes, got {buf.nbytes}")
    return np.frombuffer(buf, dtype="<f4").reshape(n_rows, row_width)


def expect_frames(frames: Sequence, n: int, what: str) -> None:
    if len(frames) != n:
        raise ProtocolError(f"{what}: expected {n} frames (header + payload), got {len(frames)}")
