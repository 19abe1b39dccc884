"""Training toolkit. Import the submodule you need; this package imports nothing heavy by itself.

* :mod:`.losses` — cross-entropy with Inception-v3 label smoothing, focal loss, soft-target CE, class weights.
* :mod:`.optim` — SGD (Nesterov) / AdamW with no weight decay on norms, biases and embeddings.
* :mod:`.schedulers` — per-step warmup + cosine, step, multistep, one-cycle, constant (``LambdaLR``).
* :mod:`.ema` — :class:`~paperzoo.train.ema.ModelEma`, exponential moving average of the weights.
* The trainer, checkpoints, logging, config and DDP helpers live in the other modules of this package.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """Lets ``paperzoo.train(config, ...)`` (the issue's Python API) coexist with the ``paperzoo.train``
    package: calling the package forwards to :func:`paperzoo.train.api.train`, imported only when called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
