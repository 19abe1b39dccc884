"""One row of facts per registered model: params and FLOPs at the default input size.

Models are built on the ``meta`` device, so even ViT-H or EfficientNet-B7 cost no memory or compute here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from paperzoo.flops import count_flops, count_params
from paperzoo.registry import create_model, get_entry

__all__ = ["ModelSummary", "summarize"]


@dataclass
class ModelSummary:
    name: str
    family: str
    paper: str
    year: int
    arxiv: str
    params: int
    ref_params: int | None
    input_size: tuple[int, int]
    gflops: float | None
    kind: str = "image"

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(name: str, with_flops: bool = True) -> ModelSummary:
    entry = get_entry(name)
    with torch.device("meta"):
        model = create_model(name)
    params = count_params(model)
    gflops = None
    if with_flops and entry.kind == "image":
        x = torch.zeros(1, 3, *entry.input_size, device="meta")
        with torch.device("meta"):
            gflops = count_flops(model, inputs=x) / 1e9
    return ModelSummary(
        name=name,
        family=entry.family,
        paper=entry.paper.title,
        year=entry.paper.year,
        arxiv=entry.paper.arxiv,
        params=params,
        ref_params=entry.ref_params,
        input_size=entry.input_size,
        gflops=gflops,
        kind=entry.kind,
    )
