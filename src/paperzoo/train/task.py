"""The one interface every training task implements: :class:`Task`, and the registry that picks it from a config.

A task owns what is specific to a problem (data, model, the loss of a batch, evaluation, what to save); the
trainer (:func:`paperzoo.train.trainer.fit`) owns the loop, checkpoints, resume, logging and DDP. A config names
its task in its top-level ``task`` field (``task: translation``); :func:`get_task` maps that name to the class,
whose :meth:`Task.config_from_dict` validates the config and :meth:`Task.from_config` builds the task.
The interface, with a worked example, is documented in docs/architecture.md ("Task interface").
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch.nn as nn
from torch import Tensor

__all__ = ["Task", "get_task", "register_task", "task_names"]


class Task(abc.ABC):
    """A training task: data, model, loss of a batch, evaluation and the state to checkpoint.

    Subclasses set the class attributes and implement the three abstract methods; ``__init__`` builds the data
    and sets ``self.train_loader``: an iterable of batches with ``set_epoch(epoch)``, ``__len__`` (micro-batches
    per epoch on this rank) and ``state_dict()`` / ``load_state_dict()`` (its position within the epoch, see
    :mod:`paperzoo.data.cursor`).
    """

    #: the value of a config's ``task`` field that selects this task (see :func:`register_task`)
    name: ClassVar[str]
    #: the config dataclass: needs the toolkit's ``model``, ``optim``, ``sched``, ``train`` and ``run`` sections
    config_type: ClassVar[type]
    #: key of :meth:`evaluate`'s dict that picks the best checkpoint, e.g. "val_acc", and its direction
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    #: what ``count`` in :meth:`train_step`'s sums counts: logged as ``<unit>_per_s`` (text tasks say "tok")
    throughput_unit: ClassVar[str] = "img"
    #: the command that resumes a run of this task, printed as ``<command> --resume RUN``
    resume_command: ClassVar[str] = "paperzoo train"

    train_loader: Any
    #: set by :meth:`from_config`: the run resumes from a checkpoint, so ``model.pretrained`` is not read again
    resuming: bool = False

    # ---- construction from a config
    @classmethod
    def config_from_dict(cls, data: dict[str, Any]) -> Any:
        """Build and validate this task's config from nested dicts (unknown keys and wrong types are errors)."""
        from .config import build_config

        return build_config(cls.config_type, data)

    @classmethod
    def from_config(cls, cfg: Any, dist: Any = None, *, resume_meta: dict[str, Any] | None = None) -> Task:
        """Build the task for ``cfg`` on this rank (``dist``: a :class:`~paperzoo.train.distributed.DistInfo`).

        ``resume_meta`` is the :meth:`metadata` saved with the checkpoint a run resumes from: a task whose data
        depends on the run (e.g. the tokenizers trained on it) rebuilds it from there rather than anew.
        """
        task = cls(cfg, dist)  # type: ignore[call-arg]
        task.resuming = resume_meta is not None
        return task

    def start_backbone(self, model: nn.Module) -> nn.Module:
        """A detector's or segmenter's backbone from the classifier ``model.pretrained`` names
        (:func:`paperzoo.weights.load_backbone`), unless the run resumes; the changes printed on the main rank."""
        m = self.cfg.model  # type: ignore[attr-defined]
        if m.pretrained and not self.resuming:
            import sys

            from paperzoo.weights import load_backbone

            changes = load_backbone(model, m.pretrained, m.pretrained_source)
            if self.dist.is_main:  # type: ignore[attr-defined]
                print(f"paperzoo: backbone from {m.pretrained} ({m.pretrained_source} weights)"
                      + "".join(f"\npaperzoo:   {line}" for line in changes), file=sys.stderr)
        return model

    # ---- what the loop calls
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A freshly initialised model (the trainer seeds the RNG first, so every rank builds the same one)."""

    @abc.abstractmethod
    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one micro-batch and sums to log: ``count`` (items, for ``<unit>_per_s`` and averages),
        ``correct`` (logged as ``train_acc``), any other key ``k`` as ``train_k`` divided by ``count``."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics, summed over DDP ranks; must include :attr:`primary_metric`."""

    def metadata(self) -> dict[str, Any]:
        """Saved with every checkpoint: what is needed to use the weights (model name and args, classes, ...)."""
        return {"task": self.name}

    def state_dict(self) -> dict[str, Any]:
        """The task's resumable state, saved in ``state.pt`` (tensors and plain containers only)."""
        return {"train_loader": self.train_loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_loader.load_state_dict(state["train_loader"])


# ----------------------------------------------------------------------------------------------- registry
_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make ``cls`` the task of configs whose ``task`` field is ``cls.name``."""
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered by {_TASKS[cls.name].__qualname__}")
    _TASKS[cls.name] = cls
    return cls


def _import_builtin_tasks() -> None:
    # the built-in tasks register themselves when their modules are imported (on first use: the text tasks
    # pull in tokenizers and metrics)
    import paperzoo.dalle.clip_task  # noqa: F401
    import paperzoo.dalle.task  # noqa: F401
    import paperzoo.dalle.vae_task  # noqa: F401
    import paperzoo.detection.task  # noqa: F401
    import paperzoo.segmentation.task  # noqa: F401
    import paperzoo.text.tasks  # noqa: F401
    import paperzoo.train.classification  # noqa: F401


def task_names() -> list[str]:
    _import_builtin_tasks()
    return sorted(_TASKS)


def get_task(name: str) -> type[Task]:
    """The task class registered under ``name`` (a config's ``task`` field)."""
    _import_builtin_tasks()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]
