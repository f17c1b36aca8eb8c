"""Where every row of a clock lives under a device-memory budget.

`analysis` reads a recorded cycle (which rows each operation touches, and when they are
next used), `layout` packs the access buffer pool, `belady` is Belady's MIN (the fewest
bytes any policy could move), `plan` is the result the worker executes (and the bytes
each operation moves), and `planner` chooses what to keep resident by bytes saved per
byte of budget (within one total, or within `regions`: separate caps for the pool,
pinned data and pinned parameters).

    plan = make_plan(cycle, budget)     # a MemoryPlan; BudgetError if it cannot fit
    ref = belady(cycle, budget)         # Moves: the reference for plan.moved_bytes
"""
from geeps.worker.memory.analysis import ALIGN, Analysis, align, analyze
from geeps.worker.memory.belady import Moves, belady
from geeps.worker.memory.layout import BudgetError
from geeps.worker.memory.plan import (STALL_LEVELS, MemoryPlan, StallError, judge_stalls,
                                      stall_report)
from geeps.worker.memory.planner import POLICIES, make_plan, minimum_budget, working_set
from geeps.worker.memory.regions import Regions

__all__ = ["ALIGN", "POLICIES", "STALL_LEVELS", "Analysis", "BudgetError", "MemoryPlan",
           "Moves", "Regions", "StallError", "align", "analyze", "belady", "judge_stalls",
           "make_plan", "minimum_budget", "stall_report", "working_set"]
