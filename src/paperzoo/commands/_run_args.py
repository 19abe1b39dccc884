"""What `paperzoo train`, `translate train` and `lm train` share: resolving CONFIG and --resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from paperzoo.train.config import find_recipe


def resolve_config_and_resume(config_arg: str | None, resume: str | None, overrides: list[str],
                              load: Callable[[Any, list[str]], Any]) -> tuple[Path | None, str | None]:
    """(config path or None, run directory to resume or None).

    ``--resume RUN_DIR`` uses the run's saved config; ``--resume`` without a value ("auto") resumes the run
    directory that CONFIG names (run.out_dir/run.name) if it exists, else starts it. ``load(config, overrides)``
    builds the task's config type to read those names.
    """
    if resume not in (None, "auto"):
        if config_arg:
            raise ValueError("--resume RUN_DIR uses the run's saved config; do not also pass CONFIG")
        return None, resume
    if not config_arg:
        raise ValueError("give a CONFIG (YAML path or recipe name) or --resume RUN_DIR")
    config = find_recipe(config_arg)
    if resume == "auto":
        cfg = load(config, overrides)
        if cfg.run.name is None:
            raise ValueError("--resume without a RUN_DIR needs a fixed run.name (e.g. --name myrun)")
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        if (run_dir / "config.yaml").is_file():
            return None, str(run_dir)
    return config, None
