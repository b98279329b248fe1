"""MNIST5k's label noise (the double-descent setting): exactly the stated share of training labels
is wrong, chosen by the seed; images and the validation/test splits are untouched."""

from __future__ import annotations

import pytest
import torch

from tdl_lightning.data import MNIST5k
from tdl_lightning.errors import ConfigError


def test_label_noise_replaces_a_fixed_share_of_training_labels_only():
    clean, noisy, again = MNIST5k(), MNIST5k(label_noise=0.2), MNIST5k(label_noise=0.2)
    for dm in (clean, noisy, again):
        dm.setup()
    (x, y), (x_noisy, y_noisy) = clean.splits["train"], noisy.splits["train"]
    assert torch.equal(x, x_noisy)
    wrong = y != y_noisy
    assert int(wrong.sum()) == round(0.2 * len(y)) == 800
    assert int(y_noisy.min()) >= 0 and int(y_noisy.max()) <= 9
    # the wrong labels are spread over the nine other classes, roughly evenly (800 / 9 = 89 each)
    shifts = torch.bincount((y_noisy[wrong] - y[wrong]) % 10, minlength=10)
    assert shifts[0] == 0 and int(shifts[1:].min()) > 50
    for split in ("val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(clean.splits[split], noisy.splits[split], strict=True))
    assert torch.equal(again.splits["train"][1], y_noisy)  # same seed, same noise
    other = MNIST5k(label_noise=0.2, seed=1)
    other.setup()
    assert int((other.splits["train"][1] != MNIST5k(seed=1).load_splits()["train"][1]).sum()) == 800


def test_label_noise_outside_zero_to_one_is_refused():
    with pytest.raises(ConfigError, match="label_noise is a share of the training labels: use 0 to 1"):
        MNIST5k(label_noise=1.5)
