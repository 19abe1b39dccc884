"""paperzoo: readable, verified implementations of landmark deep-learning architectures.

Quick start::

    import paperzoo
    paperzoo.list_models("resnet*")
    model = paperzoo.create_model("resnet18", num_classes=10, in_chans=1, small_input=True)
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
    "load_weights",
    "register_model",
]
