"""The memory-plan settings a job gives its workers (spec.cache, GEEPS_* variables).

Here, the lowest layer, so that the manifest's schema, the environment contract and
the worker's planner (geeps.worker.memory) share one list of words:

    STALL_LEVELS      what a worker does with a memory plan that makes it wait for
                      copies: refuse (StallError), warn (logged), accept (GeePS's
                      memory warning level)
    REGIONS           spec.cache.regions' fields and the GEEPS_* variable of each,
                      by the name geeps.worker.memory.Regions gives the region
"""
from __future__ import annotations

STALL_LEVELS = ("refuse", "warn", "accept")

# Regions field -> (spec.cache.regions field, GEEPS_* variable, Config field)
REGIONS = {
    "pool": ("pool", "GEEPS_POOL_MEMORY", "pool_memory"),
    "data": ("pinnedData", "GEEPS_PINNED_DATA_MEMORY", "pinned_data_memory"),
    "params": ("pinnedParameters", "GEEPS_PINNED_PARAMS_MEMORY", "pinned_params_memory"),
}
