"""What a table is: rows of float32, an update rule with its hyper-parameters and
learning-rate `schedules`, and which shard holds which rows (`partition`). Clients and
servers agree on all of it; both import it from here. `filters`: what a worker sends
of each push to a table and the residual it keeps (the client, the operation API and
geeps.torch share them).
"""
from geeps.tables.filters import PushFilter, filter_spec
from geeps.tables.table import (DEFAULT_ROW_WIDTH, DTYPE, HYPER, RULES, SCHEDULED, Table,
                                as_rows, partition, resolve_hyper)

__all__ = ["DEFAULT_ROW_WIDTH", "DTYPE", "HYPER", "RULES", "SCHEDULED", "PushFilter", "Table",
           "as_rows", "filter_spec", "partition", "resolve_hyper"]
