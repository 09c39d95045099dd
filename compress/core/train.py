"""A small, deterministic fit / evaluate loop that calls the techniques' hooks.

It lives in core because techniques train too (lottery-ticket rounds retrain inside
`apply`) and core is the one layer they may import. It is what the CLI uses; a user's own loop gets the same behaviour by calling the same
hooks (see README, "Your own training loop"). Shuffling uses a generator seeded from the
stage's seed, so a stage retrained after `--resume` gives the same weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.core.context import Progress, SilentProgress
from compress.core.errors import EdgetierError
from compress.core.technique import HookSet


class TrainSpec(BaseModel):
    """How to train: epochs, learning rate, batch size, optimizer.

    In recipes a stage's `train` block is merged over `defaults.train`, then over these defaults.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(10, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    # cosine: the learning rate falls from `lr` to 0 over all steps (per batch), the usual way to
    # train to convergence; constant suits short fine-tuning between compression steps
    schedule: Literal["constant", "cosine"] = "constant"
    # False: every Dropout is off while training (p = 0, restored after). For label-free distillation
    # of a pretrained model, where the student should match the teacher's deterministic outputs:
    # all-MiniLM-L6-v2 pruned + refit, 50 steps: embedding cosine 0.893 without dropout, 0.883 with
    dropout: bool = True

    def patched(self, patch: BaseModel | None) -> TrainSpec:
        """These settings with the fields `patch` sets replaced."""
        if patch is None:
            return self
        return self.model_copy(update=patch.model_dump(exclude_none=True))


@dataclass(frozen=True)
class History:
    losses: tuple[float, ...]
    val_accuracy: tuple[float, ...]


def _optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay)
    return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)


class DivergedError(EdgetierError):
    """Training whose loss or weights stopped being finite numbers: the stage stops there."""


def _diverged(description: str, what: str, epoch: int, spec: TrainSpec) -> DivergedError:
    return DivergedError(f"training diverged: {what} in epoch {epoch + 1} (lr {spec.lr:g}, batch_size "
                         f"{spec.batch_size}); nothing after this point would mean anything", where=description,
                         fix="lower the learning rate (lr), and check the data for NaN or huge values")


def fit(model: nn.Module, train: tuple[np.ndarray, np.ndarray], spec: TrainSpec, *,
        hooks: HookSet | None = None, val: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0,
        progress: Progress | None = None, description: str = "train", supervised: bool = True) -> History:
    """Train `model` in place for `spec.epochs` epochs with cross-entropy plus the hooks' loss terms.

    `train[0]` may be a record array with one field per model input (token ids and attention mask):
    each batch is then passed as one tensor per field, in field order. `supervised=False` trains on
    the hooks' loss terms alone (label-free, e.g. feature distillation of an embedding model).

    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> model = nn.Linear(4, 2)
    >>> history = fit(model, (x, y), TrainSpec(epochs=30, lr=0.05, batch_size=16), val=(x, y))
    >>> history.val_accuracy[-1] > 0.9
    True

    A loss that is not finite stops training with a `DivergedError` before the step that would
    spread it into the weights.
    """
    hooks = hooks or HookSet()
    progress = progress or SilentProgress()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    records = train[0].dtype.names is not None
    xs, ys = (train[0] if records else torch.from_numpy(train[0])), torch.from_numpy(train[1])
    optimizer = _optimizer(model, spec)
    steps = (len(xs) + spec.batch_size - 1) // spec.batch_size
    task = progress.task(description, total=spec.epochs * steps)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(spec.epochs * steps, 1))
                 if spec.schedule == "cosine" else None)
    lengths = _token_lengths(xs) if records else None
    losses, accs = [], []
    with _dropout(model, spec.dropout):
        for epoch in range(spec.epochs):
            model.train()
            order = torch.randperm(len(xs), generator=generator)
            if lengths is not None:
                order = by_length(order, lengths, spec.batch_size, generator=generator)
            total = 0.0
            for start in range(0, len(xs), spec.batch_size):
                idx = order[start:start + spec.batch_size]
                inputs, targets = (batch_fields(xs, idx) if records else xs[idx]), ys[idx]
                outputs = model(*inputs) if records else model(inputs)
                loss = hooks.loss(model, inputs, outputs, targets)
                if supervised:
                    loss = F.cross_entropy(outputs, targets) + loss
                elif not loss.requires_grad:
                    raise EdgetierError(f"{description}: training without labels needs a loss from a stage, and no stage "
                                        "before this training gives one", where="train",
                                        fix="add a feature_distill stage before this train block (it matches the "
                                            "teacher's embedding, no labels needed), or train on a labelled dataset")
                value = float(loss.detach())
                if not np.isfinite(value):
                    raise _diverged(description, f"the loss became {value}", epoch, spec)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                hooks.after_backward(model)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                hooks.after_step(model)
                total += value * len(idx)
                progress.advance(task)
            hooks.epoch_end(model, epoch)
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise _diverged(description, "the weights are no longer finite", epoch, spec)
            losses.append(total / max(len(xs), 1))
            if val is not None:
                accs.append(evaluate(model, val))
    progress.done(task)
    model.eval()
    return History(tuple(losses), tuple(accs))


@contextlib.contextmanager
def _dropout(model: nn.Module, on: bool) -> Iterator[None]:
    """Dropout as the spec says: when off, p = 0 in every Dropout module (Hugging Face attention
    reads `self.dropout.p` too), the original values back afterwards."""
    layers = [] if on else [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    kept = [m.p for m in layers]
    for m in layers:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(layers, kept, strict=True):
            m.p = p


POOL_BATCHES = 50  # batches whose rows are sorted by length together: similar lengths, still shuffled


def _token_lengths(x: np.ndarray) -> torch.Tensor | None:
    """Real tokens per row of a record array with an `attention_mask` field, else None."""
    if "attention_mask" not in x.dtype.names or x["attention_mask"].ndim != 2:
        return None
    return torch.from_numpy(x["attention_mask"].sum(1))


def by_length(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, *,
              generator: torch.Generator) -> torch.Tensor:
    """`order` regrouped so that each batch holds rows of similar length (each pool of
    `POOL_BATCHES` batches sorted by length, then the batches shuffled): with batches cut after
    their longest row (`batch_fields`), less padding is computed. Every row still comes once.

    >>> order = by_length(torch.arange(8), torch.tensor([1, 9, 2, 8, 3, 7, 4, 6]), 2,
    ...                   generator=torch.Generator().manual_seed(0))
    >>> sorted(order.tolist()) == list(range(8)), sorted(sorted(order[i:i + 2].tolist()) for i in range(0, 8, 2))
    (True, [[0, 2], [1, 3], [4, 6], [5, 7]])
    """
    pool = POOL_BATCHES * batch_size
    grouped = [chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in order.split(pool)]
    batches = list(torch.cat(grouped).split(batch_size))
    shuffled = torch.randperm(len(batches), generator=generator)
    return torch.cat([batches[i] for i in shuffled.tolist()]) if batches else order


def batch_fields(x: np.ndarray, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One tensor per field of the record array `x`, rows `idx`.

    Token arrays are padded to the dataset's max length; with an `attention_mask` field, every
    [batch, sequence] field is cut after the batch's last real token (the device pads per batch
    too). Masked positions change no output of a masked model, so this only saves work — most of
    it for short sentences.

    >>> x = np.zeros(2, dtype=[("input_ids", "int64", (6,)), ("attention_mask", "int64", (6,))])
    >>> x["attention_mask"][0, :2] = 1; x["attention_mask"][1, :3] = 1
    >>> [tuple(t.shape) for t in batch_fields(x, torch.tensor([0, 1]))]
    [(2, 3), (2, 3)]
    """
    rows = x[idx.numpy()]
    fields = [np.ascontiguousarray(rows[name]) for name in x.dtype.names]
    if "attention_mask" in x.dtype.names:
        mask = fields[x.dtype.names.index("attention_mask")]
        if mask.ndim == 2 and mask.size:
            used = np.flatnonzero(mask.any(0))
            width = int(used[-1]) + 1 if len(used) else 1
            fields = [np.ascontiguousarray(f[:, :width]) if f.shape[:2] == mask.shape else f for f in fields]
    return tuple(torch.from_numpy(f) for f in fields)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits of `model` (in eval mode) for `x`, as a numpy array."""
    was_training = model.training
    model.eval()
    try:
        out = [model(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.float32)


def evaluate(model: nn.Module, split: tuple[np.ndarray, np.ndarray]) -> float:
    """Top-1 accuracy (0..1) of `model` on `(x, y)`."""
    x, y = split
    return float((predict(model, x).argmax(1) == y).mean()) if len(y) else float("nan")
