import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pipeline.config import ModelConfig
from pipeline.models import ConvVAE, kl_per_dim


def test_kl_matches_reference_closed_form():
    torch.manual_seed(0)
    mu, logvar = torch.randn(8, 5), torch.randn(8, 5)
    reference = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros(5), torch.ones(5)))
    assert torch.allclose(kl_per_dim(mu, logvar), reference, atol=1e-6)


def test_kl_is_exactly_zero_for_the_prior():
    assert torch.equal(kl_per_dim(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3, 4))


def test_kl_agrees_with_monte_carlo_estimate():
    torch.manual_seed(1)
    mu, logvar = torch.tensor([0.7, -1.2]), torch.tensor([-0.5, 0.4])
    q = Normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).mean(dim=0)
    assert torch.allclose(kl_per_dim(mu, logvar), mc, rtol=0.03, atol=0.01)


def test_convvae_shapes_and_inference_outputs():
    model = ConvVAE(ModelConfig(latent_dim=8, channels=(8, 16)), image_size=32).eval()
    out = model(torch.rand(3, 1, 32, 32))
    recon, kl, ref, family = out.recon, out.latent_score, out.error_ref, out.family
    assert out.anomaly_map is None  # no defect head
    assert recon.shape == (3, 1, 32, 32) and kl.shape == (3,) and ref.shape == (3, 1, 32, 32)
    assert family.tolist() == [0, 0, 0]  # one family
    assert 0 <= recon.min() and recon.max() <= 1 and (kl >= 0).all()
    with pytest.raises(ValueError, match="divisible"):
        ConvVAE(ModelConfig(channels=(8, 16, 32)), image_size=36)


def test_recon_nll_scales_with_sigma_and_bce_matches_torch():
    from torch.nn import functional as F

    from pipeline.models import recon_nll

    x, recon = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8).clamp(0.01, 0.99)
    sse = (x - recon).pow(2).flatten(1).sum(dim=1)
    assert torch.allclose(recon_nll(x, recon, "mse", 0.1), sse / 0.02)
    bce = F.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(dim=1)
    assert torch.allclose(recon_nll(x, recon, "bce", 0.1), bce, rtol=1e-5)
    with pytest.raises(ValueError, match="recon_loss"):
        recon_nll(x, recon, "l1", 0.1)
