"""Optimizers of geeps.torch: the update on the servers, or a torch optimizer locally.

    opt = ServerOptimizer(model, "sgd", lr=0.1, momentum=0.9)
    opt = LocalOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-3))
"""
from __future__ import annotations

import torch

from geeps.tables import schedules
from geeps.tables.table import resolve_hyper
from geeps.torch.parallel import DataParallel

SERVER_RULES = ("sgd", "momentum", "adam")


class ServerOptimizer:
    """The optimizer runs on the servers: workers send gradients, never parameters.

        opt = gt.ServerOptimizer(model, "sgd", lr=0.1, momentum=0.9)   # rule momentum
        opt = gt.ServerOptimizer(model, "adam", lr=1e-3)

    Rules: sgd, momentum, adam (their hyperparameters: geeps.tables.HYPER); like
    torch.optim.SGD, "sgd" with a nonzero momentum means the momentum rule. The
    learning rate follows `schedule` (geeps.tables.schedules: warm-up, then step, cosine or
    linear decay over updates, i.e. clocks), which the servers evaluate themselves:

        opt = gt.ServerOptimizer(model, "momentum", lr=0.1, momentum=0.9,
                                 schedule={"decay": "cosine", "total": 10 * len(loader),
                                           "warmup": 100})

    A torch LR scheduler cannot drive it (the rate lives on the servers, where a
    restarted shard or a rollback must find it again); `opt.lr` is the rate of this
    worker's next update.
    Creating it creates the tables (rank 0) or waits until rank 0 has (others) and
    loads the starting values: blocks for that. step() never blocks (see
    DataParallel for what does).
    """

    def __init__(self, model: DataParallel, rule: str = "sgd", **hyper):
        if not isinstance(model, DataParallel):
            raise TypeError(f"ServerOptimizer takes the gt.DataParallel model (got "
                            f"{type(model).__name__}); wrap it first: model = gt.DataParallel(model)")
        if rule == "sgd" and "momentum" in hyper:
            if hyper["momentum"]:
                rule = "momentum"
            else:
                hyper = {k: v for k, v in hyper.items() if k != "momentum"}
        if rule not in SERVER_RULES:
            raise ValueError(f"rule {rule!r} is not one the servers run ({', '.join(SERVER_RULES)}); "
                             "for another torch optimizer use gt.LocalOptimizer(model, opt)")
        self.rule = rule
        self.hyper = resolve_hyper(rule, hyper)
        self.model = model
        model.attach_optimizer("grad", rule, self.hyper)

    @property
    def lr(self) -> float:
        """The learning rate of the update of this worker's current clock."""
        return schedules.lr_at(self.hyper["lr"], self.hyper.get("schedule", {}),
                               self.model.clock)

    @property
    def param_groups(self):
        raise AttributeError(
            "ServerOptimizer has no param_groups: the update runs on the servers, so a "
            "torch LR scheduler cannot change it; pass schedule={...} (geeps.tables.schedules)")

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.module.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> int:
        """Finish this clock (see DataParallel); returns the new clock."""
        if closure is not None:
            raise ValueError("ServerOptimizer.step() takes no closure")
        return self.model.end_clock()


class LocalOptimizer:
    """Run a torch optimizer on every worker; the servers sum the workers' mean change.

        opt = gt.LocalOptimizer(model, torch.optim.Adam(model.parameters(), lr=1e-3))

    step() runs the wrapped optimizer, pushes (parameters - parameters at the last
    refresh) / W to an `add` table, clocks and starts the refresh. Each worker keeps
    its own optimizer state; for SGD and momentum the result equals server-side
    training, for Adam it is per-worker Adam with averaged steps. Nothing is sent
    during backward. Creating it blocks like creating a ServerOptimizer; step() first
    waits for the last refresh (as forward does), since the change is measured from it.
    """

    def __init__(self, model: DataParallel, optimizer: torch.optim.Optimizer):
        if not isinstance(model, DataParallel):
            raise TypeError("LocalOptimizer takes the gt.DataParallel model first")
        mine = {id(p) for p in model.parameters()}
        for g in optimizer.param_groups:
            for p in g["params"]:
                if id(p) not in mine:
                    raise ValueError("the optimizer holds a tensor that is not a parameter of "
                                     "the wrapped model: build it from model.parameters()")
        self.optimizer = optimizer
        self.model = model
        model.attach_optimizer("delta", "add", {})

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> int:
        self.model.sync()
        self.optimizer.step(closure)
        return self.model.end_clock()
