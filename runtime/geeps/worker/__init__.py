"""The GPU-specialized worker: GeePS's operation API on a device-memory budget.

A `Worker` records one clock of reads, updates and local buffers (`ops`), plans where
every row lives within the budget (`memory`: the analysis of the recording, the pool
layout, the planner and its plan, Belady's MIN), and from then on runs each clock
from the plan with a `cache` of rows in device memory and a transfer thread moving
rows between host and device. `reads` holds what a read sees: its own slack, and the
worker's own updates of `add` tables not yet applied by the servers (read-my-writes).
"""
from geeps.worker.ops import Recorder, SequenceError
from geeps.worker.worker import Worker

__all__ = ["Recorder", "SequenceError", "Worker"]
