import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models import free_bits_kl
from pipeline.train import beta_at, train_model
from tests.conftest import small_config


def test_beta_schedules_give_documented_values():
    constant = ModelConfig(beta=2.0)
    assert [beta_at(e, constant) for e in (1, 5, 50)] == [2.0, 2.0, 2.0]
    linear = ModelConfig(beta=2.0, beta_schedule="linear", beta_warmup_epochs=4)
    assert [beta_at(e, linear) for e in range(1, 7)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cyclical = ModelConfig(beta=1.0, beta_schedule="cyclical", beta_cycle_epochs=4)
    assert [beta_at(e, cyclical) for e in range(1, 10)] == [0.5, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="beta_schedule"):
        beta_at(1, ModelConfig(beta_schedule="sawtooth"))


def test_free_bits_floor_raises_small_kl_and_stops_its_gradient():
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)  # batch means 0.2 and 3.0
    term = free_bits_kl(kl, floor=0.5)
    assert torch.allclose(term, torch.tensor([3.5, 3.5]))  # max(0.2, 0.5) + max(3.0, 0.5)
    term.sum().backward()
    assert torch.equal(kl.grad[:, 0], torch.zeros(2)) and (kl.grad[:, 1] > 0).all()
    assert torch.equal(free_bits_kl(kl.detach(), 0.0), torch.tensor([2.1, 4.3]))


def _clean_panels(n: int) -> torch.Tensor:
    """Smooth random images with real structure for the latent space to encode."""
    torch.manual_seed(0)
    coarse = torch.rand(n, 1, 4, 4)
    return (torch.nn.functional.interpolate(coarse, size=64, mode="bilinear") * 255).to(torch.uint8)


@pytest.mark.parametrize("beta, collapsed", [(1.0, False), (5000.0, True)])
def test_collapse_alarm_fires_only_when_forced(beta, collapsed):
    data = _clean_panels(96)
    cfg = small_config(epochs=6, lr=3e-3).replace("model", beta=beta)
    result = train_model(data[:64], data[64:], cfg, progress=False)
    assert result.collapsed is collapsed
    assert len(result.latent.table) == cfg.model.latent_dim
    assert bool(result.latent.warning) is collapsed
