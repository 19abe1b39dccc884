"""Pictures of the mechanisms (PNG files, matplotlib with the headless Agg backend).

Every function here writes one PNG with a title, labelled axes and a colour bar or legend, and returns its
path. The CLI front end is ``paperzoo viz <what>``; see docs/tools.md for the pictures.
"""

from .common import save_figure

__all__ = ["save_figure"]
