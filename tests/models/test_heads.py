"""The task head: one output per sample."""

from __future__ import annotations

import pytest
import torch

from neurotransfer.models import TaskHead


def test_head_gives_one_output_per_sample_and_learns() -> None:
    torch.manual_seed(0)
    head = TaskHead(16)
    features = torch.randn(32, 16)
    targets = features[:, 0] * 2.0 - 1.0
    assert head(features).shape == (32,)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    start = torch.nn.functional.mse_loss(head(features), targets).item()
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(head(features), targets).backward()
        optimizer.step()
    assert torch.nn.functional.mse_loss(head(features), targets).item() < 0.1 * start


def test_head_dropout_acts_in_training_only() -> None:
    torch.manual_seed(0)
    head = TaskHead(64, dropout=0.5)
    features = torch.randn(4, 64)
    assert not torch.equal(head.train()(features), head.train()(features))
    assert torch.equal(head.eval()(features), head.eval()(features))


@pytest.mark.parametrize(("in_features", "dropout"), [(0, 0.0), (8, 1.0), (8, -0.1)])
def test_head_rejects_bad_arguments(in_features: int, dropout: float) -> None:
    with pytest.raises(ValueError, match="TaskHead"):
        TaskHead(in_features, dropout=dropout)
