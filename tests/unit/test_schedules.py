"""Learning-rate schedules: the servers' closed forms against torch's schedulers, and
bad schedules named by field."""
import json

import numpy as np
import pytest
import torch

from geeps.server.rules import RuleState
from geeps.tables.schedules import lr_at, resolve
from geeps.tables import resolve_hyper

LR = torch.optim.lr_scheduler


def torch_rates(make_sched, lr, n):
    """The rate torch uses for each of n updates."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched, out = make_sched(opt), []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("spec,make_sched", [
    ({"decay": "step", "milestones": [3, 5], "gamma": 0.1},
     lambda o: LR.MultiStepLR(o, milestones=[3, 5], gamma=0.1)),
    ({"decay": "cosine", "total": 12, "min_lr": 0.01},
     lambda o: LR.CosineAnnealingLR(o, T_max=12, eta_min=0.01)),
    ({"decay": "linear", "total": 12},
     lambda o: LR.LinearLR(o, start_factor=1.0, end_factor=0.0, total_iters=12)),
    ({"warmup": 4},
     lambda o: LR.LinearLR(o, start_factor=0.25, total_iters=3)),
])
def test_rates_match_torchs_schedulers(spec, make_sched):
    s = resolve(spec)
    # What a checkpoint header or a create request carries back resolves the same.
    assert resolve(json.loads(json.dumps(s))) == s
    np.testing.assert_allclose([lr_at(0.5, s, k) for k in range(12)],
                               torch_rates(make_sched, 0.5, 12), rtol=1e-9, atol=1e-12)


def test_decay_ends_at_min_lr_and_constant_is_no_schedule():
    s = resolve({"decay": "cosine", "total": 10, "min_lr": 0.001})
    assert lr_at(0.1, s, 10) == lr_at(0.1, s, 1000) == pytest.approx(0.001)
    assert resolve({}) == resolve({"decay": "constant"}) == {}
    assert resolve_hyper("sgd", {"lr": 0.1, "schedule": {}}) == resolve_hyper("sgd", {"lr": 0.1})
    assert lr_at(0.1, {}, 99) == 0.1


@pytest.mark.parametrize("spec,match", [
    ([1, 2], "schedule must be a mapping"),
    ({"decay": "exp"}, "'decay' 'exp' is not one of"),
    ({"decay": "step"}, "'milestones' is required"),
    ({"decay": "step", "milestones": [5, 3]}, "'milestones' must increase"),
    ({"decay": "step", "milestones": [2.5]}, "'milestones' must be an integer"),
    ({"decay": "step", "milestones": [3], "gamma": 2}, "'gamma' must be a number in"),
    ({"decay": "cosine"}, "'total'"),
    ({"decay": "cosine", "total": 0}, "'total' must be an integer >= 1"),
    ({"decay": "cosine", "total": 5, "gamma": 0.1}, "'gamma' is not one a 'cosine'"),
    ({"warmup": -1}, "'warmup' must be an integer >= 0"),
])
def test_bad_schedules_name_the_field(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_hyper("momentum", {"schedule": spec})


def test_only_gradient_rules_take_a_schedule():
    with pytest.raises(ValueError, match="rule 'add' takes no hyperparameter 'schedule'"):
        resolve_hyper("add", {"schedule": {"warmup": 2}})


def test_the_update_rule_follows_the_schedule_block_by_block():
    # Three sgd updates of gradient 1 across a milestone at update 2; the third one,
    # applied as two slices after begin(), uses the decayed rate on both.
    hyper = {"lr": 0.5, "schedule": {"decay": "step", "milestones": [2], "gamma": 0.1}}
    st = RuleState("sgd", hyper, (4, 2))
    p = np.zeros((4, 2), np.float32)
    for _ in range(2):
        st.apply(p, np.ones((4, 2), np.float32))
    st.begin()
    for a, b in ((0, 1), (1, 4)):
        st.apply_slice(p, np.ones((4, 2), np.float32), a, b)
    np.testing.assert_allclose(p, np.full((4, 2), -1.05), rtol=1e-6)
