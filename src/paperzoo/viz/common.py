"""Figure helpers shared by the pictures."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] | None = None, **kw):
    size = size or (5.0 * ncols, 4.2 * nrows)
    return plt.subplots(nrows, ncols, figsize=size, squeeze=False, **kw)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save ``fig`` as PNG (creating folders) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
    return path


def _charmap(font_path: str) -> set[int]:
    """Code points a font file has glyphs for (empty when the file cannot be read)."""
    from matplotlib.ft2font import FT2Font

    try:
        return set(FT2Font(font_path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return set()


_FONT_CACHE: dict[frozenset[int], str | None] = {}


def _newly_installed_font(needed: frozenset[int]) -> str | None:
    """A system font that covers ``needed`` but is missing from matplotlib's font list, added to it.

    Matplotlib caches its font list (~/.cache/matplotlib) the first time it runs and does not rescan, so a
    font installed afterwards (``make fonts``) would stay invisible until that cache is deleted by hand.
    """
    from matplotlib import font_manager

    known = {f.fname for f in font_manager.fontManager.ttflist}
    for path in sorted(font_manager.findSystemFonts()):
        if path not in known and needed <= _charmap(path):
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
    return None


def font_for(texts: list[str]) -> str | None:
    """The family name of an installed font that has a glyph for every character of ``texts``, or None.

    Matplotlib's default font (DejaVu Sans) has no Hangul or CJK glyphs, so a Korean translation would be drawn
    as empty boxes: this finds a font that covers the labels (e.g. NanumGothic, Debian's fonts-nanum, which
    ``make fonts`` installs), preferring the default when it suffices, and looks past matplotlib's cached font
    list for fonts installed since. Returns None, with a warning that says what to install, when none does.
    """
    from matplotlib import font_manager

    needed = frozenset(ord(c) for text in texts for c in text if not c.isspace())
    if needed in _FONT_CACHE:
        return _FONT_CACHE[needed]
    default = font_manager.findfont(font_manager.FontProperties())
    # matplotlib's "Last Resort" font maps every code point to a placeholder box: it covers nothing really
    entries = sorted((f for f in font_manager.fontManager.ttflist if not f.name.startswith("Last Resort")),
                     key=lambda f: (f.fname != default, f.name))
    found = next((f.name for f in entries if needed <= _charmap(f.fname)), None) or _newly_installed_font(needed)
    if found is None:
        missing = "".join(sorted({chr(c) for c in needed - _charmap(default)}))[:20]
        warnings.warn(f"no installed font has glyphs for {missing!r}; they will show as boxes. Install a font "
                      "that covers them (`make fonts`, or Debian: apt install fonts-nanum or fonts-noto-cjk).",
                      stacklevel=2)
    _FONT_CACHE[needed] = found
    return found
