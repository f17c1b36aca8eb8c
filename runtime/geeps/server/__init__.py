"""A parameter-server shard: one range of rows of every table, and its update rules.

`server` is the process (`geeps server`): a ZeroMQ ROUTER loop that hands each request
to `shard`, the shard's state (tables, per-clock contributions, parked reads, the
exactly-once windows); `rows` is the rows a request names, a range or ids.
`accumulate` sums a clock's pushes in rank order as rows become final, `rules` applies
sgd/momentum/adam with the optimizer state, and `checkpoint` writes and restores a
shard; `functions` the server functions a table may name (proximal operators,
clipping, installed plug-ins), run around its rule. A server imports nothing of the
client, the worker or torch.
"""
from geeps.server.server import Server, main
from geeps.server.shard import ShardState

__all__ = ["Server", "ShardState", "main"]
