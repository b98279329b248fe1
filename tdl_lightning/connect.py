"""``tdl connect RUN_A RUN_B``: mode connectivity between two trained solutions (Garipov et al. 2018).

Two runs of the same architecture (say LeNet-5 from two seeds) end in two minima ``theta_A`` and
``theta_B``. On the straight line between them the loss usually rises high (a barrier); Garipov et
al. found a low-loss path instead, a quadratic Bezier curve

    phi(t) = (1 - t)^2 theta_A + 2 t (1 - t) c + t^2 theta_B,    t in [0, 1],

whose control point ``c`` is trained (the end points stay fixed) by minimising the loss at a point
``phi(t)``, ``t ~ U(0, 1)`` drawn anew for every mini-batch. ``tdl connect`` rebuilds both tasks from
their run directories (``config.yaml`` and the last checkpoint), trains the curve on the first run's
training data, and reports the training loss and the validation accuracy along the line and along
the curve, with the *barrier* of each: the largest height of the training loss above the chord
between its end values. It writes ``connect.json``, ``connect.png`` and the control point
(``control_point.pt``) into ``--output`` (default ``runs/mode_connectivity/<id A>_<id B>``)::

    tdl connect runs/lenet_mnist/<run A> runs/lenet_mnist/<run B> --epochs 5

Example:
    >>> a, b = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    >>> bezier_point(a, {"w": torch.full((2,), 2.0)}, b, 0.5)["w"]  # 0.25 * 0 + 0.5 * 2 + 0.25 * 1
    tensor([1.2500, 1.2500])
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tdl_lightning.errors import ConfigError, TDLError
from tdl_lightning.runs.checkpoints import check_checkpoint
from tdl_lightning.runs.directory import CHECKPOINTS, CONFIG, read_summary
from tdl_lightning.runs.reading import read_config

__all__ = [
    "PathProfile",
    "barrier",
    "bezier_point",
    "fit_bezier_curve",
    "line_point",
    "load_solution",
    "main",
    "path_profile",
]

Weights = dict[str, Tensor]


def bezier_point(theta_a: Weights, control: Weights, theta_b: Weights, t: float) -> Weights:
    """The point ``phi(t) = (1-t)^2 theta_a + 2t(1-t) control + t^2 theta_b`` of the quadratic Bezier curve.

    At ``t = 0`` and ``t = 1`` the end points come back exactly (their weights are 1 and 0).

    Example:
        >>> a, c, b = {"w": torch.tensor([1.0])}, {"w": torch.tensor([5.0])}, {"w": torch.tensor([3.0])}
        >>> [float(bezier_point(a, c, b, t)["w"]) for t in (0.0, 1.0)]
        [1.0, 3.0]
    """
    wa, wc, wb = (1 - t) ** 2, 2 * t * (1 - t), t**2
    return {name: wa * theta_a[name] + wc * control[name] + wb * theta_b[name] for name in theta_a}


def line_point(theta_a: Weights, theta_b: Weights, t: float) -> Weights:
    """The point ``(1 - t) theta_a + t theta_b`` of the straight line.

    Example:
        >>> line_point({"w": torch.tensor([0.0])}, {"w": torch.tensor([4.0])}, 0.25)["w"]
        tensor([1.])
    """
    return {name: (1 - t) * theta_a[name] + t * theta_b[name] for name in theta_a}


def barrier(ts: Sequence[float], losses: Sequence[float]) -> float:
    """The largest height of ``losses`` above the chord between its end values (0 for a convex path).

    Example:
        >>> barrier([0.0, 0.5, 1.0], [1.0, 3.0, 2.0])  # the chord is 1.5 at t = 0.5
        1.5
    """
    start, end = losses[0], losses[-1]
    return max(loss - ((1 - t) * start + t * end) for t, loss in zip(ts, losses, strict=True))


def _evaluate(task: Any, weights: Weights, batches: Iterable[Any]) -> tuple[float, float | None]:
    """Mean loss and accuracy (``None`` unless the outputs are class scores) of ``task`` at ``weights``."""
    total, correct, count, classes = 0.0, 0, 0, True
    with torch.no_grad():
        for x, y in batches:
            outputs = torch.func.functional_call(task, weights, (x,), strict=False)
            total += float(task.criterion(outputs, y)) * len(x)
            classes = classes and outputs.dim() == 2 and not torch.is_floating_point(y)
            if classes:
                correct += int((outputs.argmax(1) == y).sum())
            count += len(x)
    return total / count, (correct / count if classes else None)


@dataclass
class PathProfile:
    """Loss and accuracy at points ``t`` of a path between two solutions.

    Attributes:
        t: the points, from 0 (run A) to 1 (run B).
        train_loss: the mean training loss at each point.
        val_accuracy: the validation accuracy at each point (``None`` for regression).
        train_barrier: :func:`barrier` of ``train_loss``.

    Example:
        >>> PathProfile([0.0, 1.0], [0.1, 0.2], None).train_barrier
        0.0
    """

    t: list[float]
    train_loss: list[float]
    val_accuracy: list[float] | None
    train_barrier: float = field(init=False)

    def __post_init__(self) -> None:
        self.train_barrier = barrier(self.t, self.train_loss)


def path_profile(
    task: Any, point: Any, train: Iterable[Any], val: Iterable[Any], ts: Sequence[float]
) -> PathProfile:
    """``task`` at ``point(t)`` (weights by name) for every ``t``: training loss and validation accuracy.

    Example:
        >>> from tdl_lightning.tasks import Regressor
        >>> task = Regressor(torch.nn.Linear(1, 1, bias=False))
        >>> data = [(torch.ones(4, 1), torch.zeros(4, 1))]
        >>> point = lambda t: {"model.weight": torch.tensor([[t]])}
        >>> path_profile(task, point, data, data, [0.0, 0.5, 1.0]).train_loss
        [0.0, 0.25, 1.0]
    """
    losses, accuracies = [], []
    for t in ts:
        weights = point(t)
        losses.append(_evaluate(task, weights, train)[0])
        accuracies.append(_evaluate(task, weights, val)[1])
    return PathProfile(list(ts), losses, None if accuracies[0] is None else accuracies)  # type: ignore[arg-type]


def fit_bezier_curve(
    task: Any,
    theta_a: Weights,
    theta_b: Weights,
    batches: Iterable[Any],
    epochs: int = 5,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
) -> tuple[Weights, list[float]]:
    """Train the control point of the Bezier curve between ``theta_a`` and ``theta_b`` (Garipov et al.).

    The control point starts at the midpoint of the line; for every batch a ``t ~ U(0, 1)`` is drawn
    (own seeded generator) and SGD with momentum steps the control point on ``task.criterion`` at
    ``phi(t)``; the end points never move. Returns the control point and the mean training loss at
    the curve's midpoint ``phi(1/2)`` before training and after each epoch.

    Example:
        >>> from tdl_lightning.tasks import Regressor
        >>> task = Regressor(torch.nn.Linear(1, 1, bias=False))
        >>> a = b = {"model.weight": torch.tensor([[1.0]])}  # both ends at loss (1 - 0)^2 = 1
        >>> data = [(torch.ones(8, 1), torch.zeros(8, 1))]
        >>> control, midpoint = fit_bezier_curve(task, a, b, data, epochs=20, lr=0.1, momentum=0.0)
        >>> midpoint[0], midpoint[-1] < 0.5  # the curve bends towards the minimum w = 0 in between
        (1.0, True)
    """
    if epochs < 1 or not lr > 0:
        raise ConfigError(f"curve training needs epochs >= 1 and lr > 0, got epochs={epochs}, lr={lr}")
    control = {name: ((theta_a[name] + theta_b[name]) / 2).clone().requires_grad_(True) for name in theta_a}
    optimizer = torch.optim.SGD(list(control.values()), lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)

    def midpoint_loss() -> float:
        return _evaluate(task, bezier_point(theta_a, control, theta_b, 0.5), batches)[0]

    history = [midpoint_loss()]
    for _ in range(epochs):
        for x, y in batches:
            t = float(torch.rand((), generator=generator))
            outputs = torch.func.functional_call(
                task, bezier_point(theta_a, control, theta_b, t), (x,), strict=False
            )
            loss = task.criterion(outputs, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        history.append(midpoint_loss())
    return {name: c.detach() for name, c in control.items()}, history


def _checkpoint(run_dir: Path) -> Path:
    best = (read_summary(run_dir) or {}).get("best_checkpoint")
    if best and Path(best).is_file():  # a path relative to where `tdl fit` ran, or absolute
        return Path(best)
    found = sorted((run_dir / CHECKPOINTS).glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise TDLError(
            f"{run_dir}: no checkpoint in checkpoints/: train it with checkpointing on (the default)"
        )
    return found[-1]


def load_solution(run_dir: str | Path) -> tuple[Any, Any, Weights]:
    """Rebuild a run's task and data module from its ``config.yaml`` and return its trained weights.

    Example:
        >>> load_solution("runs/lenet_mnist/20260101-000000-abcd")  # doctest: +SKIP
    """
    import lightning as L
    from jsonargparse import ArgumentParser

    import tdl_lightning.data  # noqa: F401  (the short class names of old configs)
    import tdl_lightning.models  # noqa: F401
    import tdl_lightning.tasks  # noqa: F401

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config is None:
        raise TDLError(f"{run_dir}: no {CONFIG}: give the directory of a run made by `tdl fit`")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    try:
        objects = parser.instantiate_classes(
            parser.parse_object({"model": config.get("model"), "data": config.get("data")})
        )
    except Exception as err:  # jsonargparse's nest of union errors: the innermost cause is the reason
        if isinstance(err, TDLError):
            raise
        raise TDLError(
            f"{run_dir}: its model and data cannot be rebuilt from {CONFIG} ({_innermost(err)}): make the "
            "classes it names importable here, as for the `tdl fit` that made the run (e.g. PYTHONPATH)"
        ) from err
    task, data = objects["model"], objects["data"]
    checkpoint = check_checkpoint(_checkpoint(run_dir))
    task.load_state_dict(checkpoint["state_dict"])
    weights = {name: p.detach().clone() for name, p in task.named_parameters()}
    return task.eval(), data, weights


def _innermost(err: BaseException) -> str:
    """The first line of the deepest cause of ``err`` (its ``__cause__``, else ``__context__``, chain).

    Example:
        >>> try:
        ...     try:
        ...         import no_such_module  # noqa: F401
        ...     except ImportError as inner:
        ...         raise ValueError("Does not validate") from inner
        ... except ValueError as outer:
        ...     print(_innermost(outer))
        No module named 'no_such_module'
    """
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _check_same_architecture(a: Weights, b: Weights, names: tuple[str, str]) -> None:
    shapes_a = {k: tuple(v.shape) for k, v in a.items()}
    shapes_b = {k: tuple(v.shape) for k, v in b.items()}
    if shapes_a != shapes_b:
        differ = sorted(set(shapes_a.items()) ^ set(shapes_b.items()))[:3]
        raise TDLError(
            f"{names[0]} and {names[1]} do not have the same architecture (parameters differ: {differ}): "
            "connect two runs of one model"
        )


def _figure(line: PathProfile, curve: PathProfile, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + (line.val_accuracy is not None)
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    for profile, label in ((line, "straight line"), (curve, "Bezier curve")):
        axes[0][0].plot(
            profile.t, profile.train_loss, "o-", ms=3, label=f"{label} (barrier {profile.train_barrier:.3f})"
        )
        if profile.val_accuracy is not None:
            axes[0][1].plot(profile.t, profile.val_accuracy, "o-", ms=3, label=label)
    axes[0][0].set_ylabel("training loss")
    axes[0][0].set_yscale("log")
    if panels == 2:
        axes[0][1].set_ylabel("validation accuracy")
    for ax in axes[0]:
        ax.set_xlabel("t (0: run A, 1: run B)")
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=80)
    plt.close(figure)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdl connect", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", help="run directory of the first solution (runs/<experiment>/<run id>)")
    parser.add_argument("run_b", help="run directory of the second solution, same architecture")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of curve training (default 5)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate of the control point")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--points", type=int, default=21, help="points t in [0, 1] to evaluate (default 21)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws of t")
    parser.add_argument(
        "--output", help="folder for connect.json/.png (default runs/mode_connectivity/<A>_<B>)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``tdl connect RUN_A RUN_B [--epochs N] [--lr LR] [--points K] [--output DIR]``.

    Example:
        >>> main(["runs/lenet_mnist/A", "runs/lenet_mnist/B", "--epochs", "5"])  # doctest: +SKIP
    """
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.points < 2:
        raise ConfigError(f"--points must be >= 2 (both end points), got {args.points}")
    task, data, theta_a = load_solution(args.run_a)
    _, _, theta_b = load_solution(args.run_b)
    _check_same_architecture(theta_a, theta_b, (args.run_a, args.run_b))
    data.setup("fit")
    train = list(data.train_dataloader())
    val = list(data.val_dataloader())
    control, midpoint = fit_bezier_curve(
        task, theta_a, theta_b, train, args.epochs, args.lr, args.momentum, args.seed
    )
    ts = [i / (args.points - 1) for i in range(args.points)]
    line = path_profile(task, lambda t: line_point(theta_a, theta_b, t), train, val, ts)
    curve = path_profile(task, lambda t: bezier_point(theta_a, control, theta_b, t), train, val, ts)
    output = Path(
        args.output or Path("runs") / "mode_connectivity" / f"{Path(args.run_a).name}_{Path(args.run_b).name}"
    )
    output.mkdir(parents=True, exist_ok=True)
    report = {
        "run_a": str(args.run_a),
        "run_b": str(args.run_b),
        "epochs": args.epochs,
        "lr": args.lr,
        "momentum": args.momentum,
        "midpoint_loss_during_training": midpoint,
        "line": asdict(line),
        "curve": asdict(curve),
    }
    (output / "connect.json").write_text(json.dumps(report, indent=1))
    torch.save(control, output / "control_point.pt")
    _figure(line, curve, output / "connect.png")
    lines = [
        f"tdl connect: {args.run_a} <-> {args.run_b}",
        f"  training loss at the ends   : {line.train_loss[0]:.4f}, {line.train_loss[-1]:.4f}",
        f"  straight line: barrier {line.train_barrier:.4f}, highest loss {max(line.train_loss):.4f}",
        f"  Bezier curve : barrier {curve.train_barrier:.4f}, highest loss {max(curve.train_loss):.4f}",
    ]
    if line.val_accuracy is not None and curve.val_accuracy is not None:
        lines.append(
            f"  lowest val accuracy: line {min(line.val_accuracy):.4f}, curve {min(curve.val_accuracy):.4f}"
        )
    lines.append(f"  midpoint loss while training the curve: {' -> '.join(f'{v:.4f}' for v in midpoint)}")
    lines.append(f"  written to {output} (connect.json, connect.png, control_point.pt)")
    if not all(math.isfinite(v) for v in curve.train_loss):
        lines.append("  the curve diverged: lower --lr")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
