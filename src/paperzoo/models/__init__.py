"""Model families, one per file. Importing this package imports every module in it, which registers
its builders with :mod:`paperzoo.registry` (so adding a family never edits a shared list)."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
