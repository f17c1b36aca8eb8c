"""A worker's connection to every shard.

`Client` (module `client`) is the API (create tables, read, push, clock); its
requests travel on one background `iothread` per client, which also drives the
rollback after a shard restarts (the steps: `recovery`); `Handle` (module `handles`)
is what asynchronous calls return, `Step` what the pipelined `exchange_async` does; `hosted` is the shard a co-located worker serves
from its own process (GeePS's layout), made by `colocated()` or GEEPS_COLOCATE=1.
"""
from geeps.client.client import Client, Step, colocated
from geeps.client.handles import Handle

__all__ = ["Client", "Handle", "Step", "colocated"]
