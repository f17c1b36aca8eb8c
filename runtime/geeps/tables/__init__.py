"""What a table is: rows of float32, an update rule with its hyper-parameters and
learning-rate `schedules`, and which shard holds which rows (`partition`). Clients and
servers agree on all of it; both import it from here.
"""
from geeps.tables.table import (DEFAULT_ROW_WIDTH, DTYPE, HYPER, RULES, SCHEDULED, Table,
                                as_rows, partition, resolve_hyper)

__all__ = ["DEFAULT_ROW_WIDTH", "DTYPE", "HYPER", "RULES", "SCHEDULED", "Table", "as_rows",
           "partition", "resolve_hyper"]
