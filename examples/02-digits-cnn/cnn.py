"""The digits CNN, its data and its evaluation, shared by train_single.py and train.py.

Nothing here knows about geeps: the two training scripts differ only where the
distributed one says so (see README.md).
"""
from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

# Convolutions this small run fastest on one thread: waking a second costs more than
# the work it would take over (and under `geeps run` the workers share the cores).
torch.set_num_threads(1)


class Net(nn.Module):
    """Two 3x3 convolutions, a max-pool and two linear layers: ~40k parameters."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def data(batch: int):
    """scikit-learn's 8x8 digits: a shuffling training loader and the test tensors
    (25% held out, the same split everywhere)."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]          # N x 1 x 8 x 8 in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(x, d.target, test_size=0.25,
                                                        random_state=0)
    train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    loader = DataLoader(train, batch_size=batch, shuffle=True)
    return loader, (torch.from_numpy(x_test), torch.from_numpy(y_test))


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def report(**fields) -> None:
    """A progress line: `geeps run` turns it into its status line; alone it is printed."""
    try:
        from geeps import report as geeps_report
    except ImportError:
        print("progress " + json.dumps(fields), file=sys.stderr)
        return
    geeps_report(**fields)
