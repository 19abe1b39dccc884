"""A toy task: recover y = a·x + b with one linear unit (the example of docs/architecture.md, "Task interface")."""

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from paperzoo.data.loader import TensorLoader
from paperzoo.train.config import ModelConfig, OptimConfig, RunConfig, SchedConfig, TrainConfig
from paperzoo.train.task import Task, register_task


@dataclass
class LineData:
    a: float = 2.0  # the slope and intercept to recover
    b: float = -1.0
    points: int = 256
    batch_size: int = 32


@dataclass
class LineConfig:  # the trainer reads the model, optim, sched, train and run sections
    task: str = "line"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="linear"))
    data: LineData = field(default_factory=LineData)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.1, weight_decay=0.0))
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)


@register_task
class LineTask(Task):
    name, config_type = "line", LineConfig
    primary_metric, higher_is_better = "val_mse", False
    throughput_unit = "point"  # what train_step's "count" counts: logged as point_per_s

    def __init__(self, cfg: LineConfig, dist) -> None:
        d = cfg.data
        self.x = torch.linspace(-1, 1, d.points).view(-1, 1, 1, 1)  # (N, 1, 1, 1): TensorLoader batches images
        self.y = d.a * self.x.flatten() + d.b  # (N,)
        self.train_loader = TensorLoader(self.x, self.y, d.batch_size, shuffle=True, drop_last=True,
                                         seed=cfg.train.seed, device=dist.device, rank=dist.rank,
                                         world_size=dist.world_size)

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(1, 1), nn.Flatten(0))  # (B, 1, 1, 1) -> (B,)

    def train_step(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        return F.mse_loss(model(x), y), {"count": torch.tensor(len(y))}

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        return {"val_mse": F.mse_loss(model(self.x.to(device)), self.y.to(device)).item()}
