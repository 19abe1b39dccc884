"""paperzoo: readable, verified implementations of landmark deep-learning architectures.

Quick start::

    import paperzoo
    paperzoo.list_models("resnet*")
    model = paperzoo.create_model("resnet18", num_classes=10, in_chans=1, small_input=True)
    trained = paperzoo.load_run("runs/NAME", which="best")  # architecture + weights + .classes, eval mode
"""

from .flops import count_flops, count_params
from .registry import Paper, create_model, get_entry, list_models, register_model
from .weights import WeightLoadError, load_weights

__version__ = "0.1.0"

__all__ = [
    "Paper",
    "WeightLoadError",
    "count_flops",
    "count_params",
    "create_model",
    "get_entry",
    "list_models",
    "load_run",
    "load_weights",
    "register_model",
    "train",
    "evaluate",
    "ensemble",
    "average_checkpoints",
    "predict",
    "fuse",
]

# The training API is imported on first use, so ``import paperzoo`` stays fast. ``paperzoo.train`` is the
# training package itself, made callable (see paperzoo/train/__init__.py): paperzoo.train(config) trains.
_LAZY = {"evaluate": "evaluate", "ensemble": "ensemble", "average_checkpoints": "average_checkpoints",
         "predict": "predict_files", "load_run": "load_run"}


def __getattr__(name: str):
    if name == "train":
        import importlib

        return importlib.import_module(".train", __name__)
    if name == "fuse":
        from .deploy import fuse

        return fuse
    if name in _LAZY:
        from .train import evaluate as _evaluate

        return getattr(_evaluate, _LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
