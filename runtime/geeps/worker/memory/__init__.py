"""Where every row of a clock lives under a device-memory budget.

`analysis` reads a recorded clock (which rows each operation touches, and when they are
next used), `layout` packs the access buffer pool, `belady` is Belady's MIN (the fewest
bytes any policy could move), `plan` is the result the worker executes, and `planner`
chooses what to keep resident by bytes saved per byte of budget.
"""
from geeps.worker.memory.layout import ALIGN, align, analyze
from geeps.worker.memory.plan import Plan
from geeps.worker.memory.planner import (POLICIES, BudgetError, Moves, belady, make_plan,
                                         minimum_budget, working_set)

__all__ = ["ALIGN", "POLICIES", "BudgetError", "Moves", "Plan", "align", "analyze", "belady",
           "make_plan", "minimum_budget", "working_set"]
