"""The rollback after a server restart, as one client drives it: which checkpoint the
job returns to, and when it is back there. No sockets: the I/O thread
(geeps.client.iothread) sends the requests and feeds the replies in here.

A shard that restarted from its newest checkpoint (or was rolled back) has a new
incarnation. Every shard must then return to one common checkpoint and every worker
to its clock:

    ASKING      every shard was asked for its checkpoints' clocks (`checkpoints`);
                `on_checkpoints` takes each answer. With all in: the newest clock
                every shard holds ...
    RESTORING   ... is restored on every shard (`restore`, idempotent per cause, so
                the workers that notice the same restart agree); `on_restored` takes
                each answer. With all in:
    DONE        the job is at `clock`: the calls in flight (`doomed`) fail with
                RolledBack(clock).
    FAILED      a shard refused, or the shards hold no common checkpoint: the job
                cannot resume, the doomed calls fail with the client's fatal error.

    rb = Rollback(cause, "server 1 (...) restarted", n_shards=2, doomed=handles)
    step = rb.on_checkpoints(0, "server 0 (...)", reply)     # None: wait for more
    if isinstance(step, Restore): ...                        # send restore(step.clock)

Each `on_*` returns the step the I/O thread takes next: None (wait for more
answers), Restore (ask every shard to restore `clock`), Done (the rollback is
complete at `clock`) or Failed (`why`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from geeps.client.handles import Handle
from geeps.errors import RolledBack


class State(enum.Enum):
    ASKING = "asking"           # waiting for every shard's checkpoint clocks
    RESTORING = "restoring"     # waiting for every shard to restore the common clock
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Restore:
    """Ask every shard to restore checkpoint `clock`, naming the rollback's `cause`."""
    clock: int
    cause: str


@dataclass(frozen=True)
class Done:
    """Every shard is back at `clock`."""
    clock: int


@dataclass(frozen=True)
class Failed:
    """The rollback cannot complete: `why`."""
    why: str


Step = Restore | Done | Failed | None


@dataclass
class Rollback:
    """One rollback (see the module docstring). `cause` names the restart it answers
    (a second restart with another cause starts a new Rollback, which takes over the
    doomed calls); `why` is what RolledBack says; `doomed`: the handles of the calls
    in flight when it began, or made during it that must hear how it ended."""
    cause: str
    why: str
    n_shards: int
    doomed: list[Handle] = field(default_factory=list)
    state: State = State.ASKING
    clocks: dict[int, set[int]] = field(default_factory=dict)  # shard -> checkpoint clocks
    restored: set[int] = field(default_factory=set)            # shards back at `clock`
    clock: int | None = None                                   # the checkpoint chosen

    def doom(self, handle: Handle) -> None:
        """`handle` completes when the rollback does: RolledBack(clock), or the error."""
        self.doomed.append(handle)

    def on_checkpoints(self, shard: int, name: str, reply: dict) -> Step:
        """Shard `shard` (called `name` in errors) answered `checkpoints`."""
        if self.state is not State.ASKING:
            return None
        if not reply.get("ok"):
            return self._fail(f"{name}: {reply.get('error')}")
        self.clocks[shard] = set(reply.get("clocks", []))
        if len(self.clocks) < self.n_shards:
            return None
        common = set.intersection(*self.clocks.values())
        if not common:
            return self._fail(
                "the shards hold no common checkpoint (" + "; ".join(
                    f"server {k}: {sorted(v) or 'none'}" for k, v in self.clocks.items())
                + "): the job cannot resume; restart it")
        self.clock = max(common)
        self.state = State.RESTORING
        return Restore(self.clock, self.cause)

    def on_restored(self, shard: int, name: str, reply: dict) -> Step:
        """Shard `shard` answered `restore`."""
        if self.state is not State.RESTORING:
            return None
        if not reply.get("ok"):
            return self._fail(f"{name}: {reply.get('error')}")
        self.restored.add(shard)
        if len(self.restored) < self.n_shards:
            return None
        self.state = State.DONE
        return Done(self.clock)

    def release(self, error: BaseException | None = None) -> None:
        """Fail every doomed call: with RolledBack(clock) once DONE, else with `error`
        (the rollback failed or was abandoned)."""
        if error is None and self.state is not State.DONE:
            raise ValueError(f"the rollback is {self.state.value}: give the error to fail with")
        for h in self.doomed:       # one RolledBack each: every waiter raises its own
            h.set_exception(RolledBack(self.clock, self.why) if error is None else error)

    def _fail(self, why: str) -> Failed:
        self.state = State.FAILED
        return Failed(why)
