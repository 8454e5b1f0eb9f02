"""The generator's weight average (attngan/train/ema.py): the update rule, buffers copied, the
average frozen, and clear errors for a bad decay or a model the average was not built from."""

import pytest
import torch
import torch.nn as nn

from attngan.train.ema import EMA


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_update_averages_parameters_and_copies_buffers():
    model = _model()
    ema = EMA(model, decay=0.9)
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 3))  # moves the BatchNorm running statistics
    ema.update(model)
    for old, average, current in zip(before, ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(
            average, 0.9 * old + 0.1 * current.detach(), rtol=1e-6, atol=1e-7
        )
        assert not torch.equal(average, current)
    for average, current in zip(ema.module.buffers(), model.buffers()):
        assert torch.equal(average, current)


def test_bad_decay_and_foreign_model_raise():
    with pytest.raises(ValueError, match=r"gan.ema_decay must be in \[0, 1\), got 1.0"):
        EMA(_model(), decay=1.0)
    ema = EMA(_model())
    with pytest.raises(ValueError, match="pass the model the EMA was built from"):
        ema.update(nn.Linear(3, 4))
