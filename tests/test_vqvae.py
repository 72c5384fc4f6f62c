"""VQ-VAE: the quantizer's definitions (straight-through, perplexity, usage) and codebook health."""

import math

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.models import VQVAE, VectorQuantizer, codebook_usage, perplexity


def test_perplexity_and_usage_equal_hand_computation():
    assert perplexity(torch.tensor([2.0, 2.0, 0.0, 0.0])) == pytest.approx(2.0)
    assert perplexity(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    # p = (3/4, 1/4): exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7548...
    assert perplexity(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert perplexity(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert codebook_usage(torch.tensor([2.0, 2.0, 0.0, 0.0])) == 0.5


def test_quantizer_snaps_to_nearest_code_and_passes_gradient_straight_through():
    q = VectorQuantizer(num_codes=3, dim=2, update="loss", dead_code_threshold=0).eval()
    q.codebook.data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])
    z = torch.tensor([[0.9, 1.2], [-1.5, 0.1]]).t().reshape(1, 2, 1, 2).clone().requires_grad_(True)
    out = q(z)
    assert out.indices.flatten().tolist() == [1, 2]
    assert torch.equal(out.quantized.detach()[0, :, 0, 0], torch.tensor([1.0, 1.0]))
    upstream = torch.randn_like(out.quantized)
    (out.quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # identity gradient through the non-differentiable snap
    assert out.distance.flatten().tolist() == pytest.approx([0.01 + 0.04, 0.25 + 0.01], abs=1e-6)


def test_reconstruction_gradient_reaches_the_encoder():
    model = VQVAE(ModelConfig(model_type="vqvae", latent_dim=8, channels=(8, 16), codebook_size=16), image_size=32)
    x = torch.rand(4, 1, 32, 32)
    step = model.training_step(x)
    step.recon.mean().backward()  # reconstruction only: no commitment term pulling on the encoder
    first_conv = model.encoder[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def _clusters(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points around 8 well-separated centres in 4-D, as a (1, 4, 1, n) latent grid."""
    centres = torch.arange(8, dtype=torch.float32).unsqueeze(1) * torch.tensor([3.0, -2.0, 1.0, 4.0])
    pick = torch.randint(8, (n,), generator=generator)
    points = centres[pick] + 0.05 * torch.randn(n, 4, generator=generator)
    return points.t().reshape(1, 4, 1, n)


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_dead_code_restart_revives_a_codebook_that_starts_dead(update):
    """Every code but one starts far from the data, so only that one is ever chosen; restart
    re-seeds the dead codes from encoder outputs and usage rises to cover the 8 clusters."""
    usage = {}
    for threshold in (0.0, 0.05):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        q = VectorQuantizer(num_codes=16, dim=4, update=update, decay=0.9, dead_code_threshold=threshold)
        with torch.no_grad():
            q.codebook.data.fill_(1000.0)
            q.codebook.data[0] = 0.0
            if update == "ema":
                q.ema_sum.copy_(q.codebook)
        optimizer = torch.optim.SGD(q.parameters(), lr=0.5) if update == "loss" else None
        q.train()
        for _ in range(60):
            out = q(_clusters(256, generator))
            if optimizer is not None:
                optimizer.zero_grad()
                out.codebook_loss.sum().backward()
                optimizer.step()
        q.eval()
        usage[threshold] = codebook_usage(q(_clusters(2048, generator)).counts)
    assert usage[0.0] == 1 / 16  # without restart the dead codes never come back
    assert usage[0.05] >= 8 / 16  # at least one live code per cluster


def test_eval_forward_leaves_the_codebook_alone_and_scores_are_distances():
    model = VQVAE(ModelConfig(model_type="vqvae", latent_dim=8, channels=(8, 16), codebook_size=16), image_size=32).eval()
    before = model.quantizer.codebook.clone()
    out = model(torch.rand(3, 1, 32, 32))
    recon, dist, ref = out.recon, out.latent_score, out.error_ref
    assert torch.equal(model.quantizer.codebook, before)
    assert recon.shape == ref.shape == (3, 1, 32, 32) and dist.shape == (3,) and (dist >= 0).all()
