"""The self-supervised check: synthetic defects pasted on clean crops, and the epoch it keeps."""

from __future__ import annotations

import copy

import torch

from pipeline.selfcheck import paste_defects, pasted_copies, synthetic_check
from pipeline.training import train_model
from tests.conftest import small_config
from tests.test_train import _clean_panels


def test_each_crop_gets_one_visible_defect_and_nothing_else_changes():
    x = torch.rand(24, 1, 64, 64) * 0.5 + 0.25
    pasted = paste_defects(x, torch.Generator().manual_seed(3))
    outside = pasted.masks == 0
    assert torch.equal(pasted.images[outside], x[outside])  # pixels outside the defect untouched
    assert (pasted.masks.flatten(1).amax(1) > 0.5).all()  # every crop has a defect
    changed = (pasted.images - x).abs().flatten(1).amax(1)
    assert (changed > 0.05).float().mean() > 0.9  # and nearly all of them are visible
    area = pasted.masks.flatten(1).mean(1)
    assert area.max() < 0.25  # defects, not whole new surfaces


def test_pasting_is_seeded():
    clean = _clean_panels(8)
    assert torch.equal(pasted_copies(clean, seed=1), pasted_copies(clean, seed=1))
    assert not torch.equal(pasted_copies(clean, seed=1), pasted_copies(clean, seed=2))


def test_defects_are_made_on_the_crops_device_and_are_the_same_on_any_device():
    """A GPU-trained defect head gets its pasted batches on the GPU, not from the CPU ('meta', a
    device without data, stands in for one: any CPU tensor mixed in would fail), and the random
    draws stay on the CPU generator, so the defects do not depend on the device."""
    x = torch.rand(6, 1, 32, 32)
    on_meta = paste_defects(x.to("meta"), torch.Generator().manual_seed(4))
    assert on_meta.images.device.type == on_meta.masks.device.type == "meta"
    assert on_meta.images.shape == on_meta.masks.shape == x.shape
    g = torch.Generator().manual_seed(4)
    paste_defects(x.to("meta"), g)
    after_meta = paste_defects(x, g)  # the meta call drew exactly what a CPU call draws
    g = torch.Generator().manual_seed(4)
    paste_defects(x, g)
    assert torch.equal(paste_defects(x, g).images, after_meta.images)


def test_a_model_that_copies_its_input_cannot_find_pasted_defects():
    """An identity 'reconstruction' leaves no error anywhere: every candidate score is at chance."""
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x, torch.zeros(len(x)), torch.ones_like(x), torch.zeros(len(x), dtype=torch.long)

    clean = _clean_panels(16)
    aucs = synthetic_check(Identity(), clean, pasted_copies(clean), small_config())
    assert aucs and all(auc == 0.5 for auc in aucs.values())


def test_training_keeps_the_epoch_best_at_finding_pasted_defects(monkeypatch):
    """A model that got worse at finding pasted defects (epochs 3, 4) is not the one kept, even
    though its clean reconstruction kept improving."""
    import pipeline.training as train_module

    aucs, weights = iter([0.60, 0.90, 0.70, 0.55]), []

    def check(model, clean, pasted, cfg):
        weights.append(copy.deepcopy(model.encoder[0][0].weight.detach()))
        return {"norm_blur_max": next(aucs), "blur_max": 0.5}

    monkeypatch.setattr(train_module, "synthetic_check", check)
    data = _clean_panels(96)
    result = train_model(data[:64], data[64:], small_config(epochs=4, min_epochs=4, select_by="synthetic"), progress=False)
    assert [h["val/synthetic_auc"] for h in result.history] == [0.60, 0.90, 0.70, 0.55]
    assert result.history[3]["val/recon"] < result.history[1]["val/recon"]  # recon alone would keep epoch 4
    assert result.best_epoch == 2 and torch.equal(result.model.encoder[0][0].weight, weights[1])
    recon = train_model(data[:64], data[64:], small_config(epochs=4, min_epochs=4, select_by="recon"), progress=False)
    assert recon.best_epoch == 4 and "val/synthetic_auc" not in recon.history[0]


def test_select_by_last_runs_the_whole_schedule_and_keeps_the_last_epoch(monkeypatch):
    """Clean val reconstruction that gets worse every epoch stops a recon-selected training early
    at its first epoch; select_by="last" trains every epoch and keeps the final weights."""
    import pipeline.training as train_module

    passes, weights = iter(range(1, 100)), []
    real_pass = train_module._epoch_pass

    def worsening_val(model, loader, n, cfg, beta, device, optimizer, *args):
        metrics = real_pass(model, loader, n, cfg, beta, device, optimizer, *args)
        if optimizer is None:  # the val pass: each epoch reconstructs clean val worse than the last
            weights.append(copy.deepcopy(model.encoder[0][0].weight.detach()))
            metrics["recon"] = float(next(passes))
        return metrics

    monkeypatch.setattr(train_module, "_epoch_pass", worsening_val)
    data = _clean_panels(96)
    recon = train_model(data[:64], data[64:], small_config(epochs=4, min_epochs=1, patience=1, select_by="recon"),
                        progress=False)
    assert len(recon.history) == 2 and recon.best_epoch == 1 and recon.stopped_early
    weights.clear()
    last = train_model(data[:64], data[64:], small_config(epochs=4, min_epochs=1, patience=1, select_by="last"),
                       progress=False)
    assert len(last.history) == 4 and last.best_epoch == 4 and not last.stopped_early
    assert torch.equal(last.model.encoder[0][0].weight, weights[-1])
