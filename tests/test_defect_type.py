"""The suspected-defect hint: a small classifier over anomaly-map features."""

from __future__ import annotations

import json

import numpy as np
import torch

from pipeline.defect_type import DefectTypeClassifier, error_features


def _maps(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Cracks: thin lines anywhere, any direction. Loose connectors: a blob at the connector's place."""
    rng = np.random.default_rng(seed)
    maps, labels = [], []
    for i in range(n):
        heat = torch.from_numpy(rng.random((64, 64)) * 0.2)
        if i % 2:
            y, x0 = rng.integers(5, 59), rng.integers(0, 20)
            heat[y:y + 2, x0:x0 + 30] += 1.0
            heat = heat.T.clone() if rng.random() < 0.5 else heat
            labels.append("crack")
        else:
            cy, cx = 44 + rng.integers(-3, 4), 28 + rng.integers(-3, 4)
            heat[cy - 5:cy + 5, cx - 8:cx + 8] += 1.0
            labels.append("loose_connector")
        maps.append(heat)
    return torch.stack(maps), np.array(labels)


def test_names_the_defect_type_on_held_out_maps_and_survives_json():
    train_maps, train_labels = _maps(40, seed=0)
    test_maps, test_labels = _maps(40, seed=1)
    classifier = DefectTypeClassifier.fit(error_features(train_maps), train_labels)
    assert classifier is not None and set(classifier.classes) == {"crack", "loose_connector"}
    assert classifier.accuracy(error_features(test_maps), test_labels) >= 0.9
    restored = DefectTypeClassifier.from_dict(json.loads(json.dumps(classifier.to_dict())))
    kinds, confidence = classifier.predict(error_features(test_maps))
    kinds2, confidence2 = restored.predict(error_features(test_maps))
    assert (kinds == kinds2).all() and np.allclose(confidence, confidence2)
    assert ((confidence >= 0.5) & (confidence <= 1)).all()


def test_no_hint_without_two_labelled_types():
    maps, labels = _maps(20, seed=2)
    only_cracks = labels == "crack"
    assert DefectTypeClassifier.fit(error_features(maps[only_cracks]), labels[only_cracks]) is None
    assert DefectTypeClassifier.from_dict(None) is None


def test_unknown_defect_labels_become_other():
    maps, labels = _maps(30, seed=3)
    labels = np.where(labels == "crack", "scorch_mark", labels)
    classifier = DefectTypeClassifier.fit(error_features(maps), labels)
    assert set(classifier.classes) == {"loose_connector", "other"}
