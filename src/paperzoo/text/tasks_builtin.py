"""A built-in translation task that needs no download: English dates and numbers into Korean, French or German.

Sources are English phrases, targets the same value written out by CLDR locale data (Babel) or num2words:

* dates (1900-01-01 .. 2099-12-31) in CLDR's "full" and "long" formats:
  "Thursday, August 12, 2021" -> "2021년 8월 12일 목요일" / "jeudi 12 août 2021" / "Donnerstag, 12. August 2021";
  "August 12, 2021" -> "2021년 8월 12일" / "12 août 2021" / "12. August 2021";
* cardinal numbers 0 .. ``max_number`` in words (num2words):
  "four thousand and ninety-six" -> "사천구십육" / "quatre mille quatre-vingt-seize" / "viertausendsechsundneunzig".

This is real transduction, not copying: month and weekday names are translated, word order changes (Korean puts
the year first), numbers are re-composed in another system (Korean counts in units of 10⁴, French says
"quatre-vingt-dix-neuf" for 99, German writes one long compound), and digits are copied.

Held out (tested): the test, validation and training values are disjoint. The test values are drawn first from
their own seeded stream, so they depend only on (``seed``, ``n_test``, ``max_number``), never on the training
size; validation values are drawn next, excluding them; training values are drawn last, excluding both.
Everything is deterministic: the same arguments give the same pairs in the same order on every machine (given
the same Babel and num2words versions, which are recorded in :func:`task_info`).
"""

from __future__ import annotations

import datetime as _dt
import random
from dataclasses import dataclass
from typing import Any

__all__ = ["LANGS", "BuiltinSplits", "make_builtin_pairs", "render", "task_info", "value_space"]

LANGS = {"ko": "ko_KR", "fr": "fr_FR", "de": "de_DE"}  # target language -> CLDR locale
_FIRST_DAY = _dt.date(1900, 1, 1)
_N_DAYS = (_dt.date(2099, 12, 31) - _FIRST_DAY).days + 1  # 73,049 days
_DATE_FORMATS = ("full", "long")

Value = tuple[str, int]  # ("date_full" | "date_long" | "number", index into that kind's range)


def _check_lang(lang: str) -> None:
    if lang not in LANGS:
        raise ValueError(f"unknown target language {lang!r}; the built-in task knows {', '.join(LANGS)}")


def value_space(max_number: int) -> dict[str, int]:
    """Number of distinct values of each kind."""
    return {"date_full": _N_DAYS, "date_long": _N_DAYS, "number": max_number + 1}


def render(value: Value, lang: str) -> tuple[str, str]:
    """The (English, ``lang``) pair of one value."""
    from babel.dates import format_date
    from num2words import num2words

    _check_lang(lang)
    kind, i = value
    if kind == "number":
        return num2words(i, lang="en"), num2words(i, lang=lang)
    fmt = kind.removeprefix("date_")
    day = _FIRST_DAY + _dt.timedelta(days=i)
    return format_date(day, format=fmt, locale="en_US"), format_date(day, format=fmt, locale=LANGS[lang])


def _draw(rng: random.Random, n: int, kinds: dict[str, int], p_date: float, exclude: set[Value]) -> list[Value]:
    """``n`` distinct values not in ``exclude``: a date (either format) with probability ``p_date``."""
    out: list[Value] = []
    seen = set(exclude)
    # values that can be drawn at all: dates only if p_date > 0, numbers only if p_date < 1
    kinds_used = {k: n for k, n in kinds.items() if (p_date > 0 if k.startswith("date") else p_date < 1)}
    capacity = sum(kinds_used.values()) - sum(1 for k, _ in exclude if k in kinds_used)
    if n > capacity:
        raise ValueError(f"asked for {n} more distinct values but only {capacity} remain; lower the split sizes "
                         "or raise max_number")
    while len(out) < n:
        if rng.random() < p_date:
            kind = _DATE_FORMATS[rng.randrange(2)]
            v = (f"date_{kind}", rng.randrange(kinds[f"date_{kind}"]))
        else:
            v = ("number", rng.randrange(kinds["number"]))
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


@dataclass
class BuiltinSplits:
    """Parallel pairs (English, target) of each split, and the values they came from."""

    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]
    values: dict[str, list[Value]]


def make_builtin_pairs(lang: str = "ko", *, n_train: int = 20000, n_val: int = 500, n_test: int = 1000,
                       max_number: int = 99999, p_date: float = 0.5, seed: int = 0) -> BuiltinSplits:
    """Deterministic train/val/test pairs with disjoint values (see the module docstring).

    Args:
        lang: target language, "ko", "fr" or "de".
        n_train, n_val, n_test: pairs per split.
        max_number: numbers are drawn from 0 .. max_number.
        p_date: probability that an example is a date (else a number).
        seed: the task's seed (independent of the training seed).
    """
    _check_lang(lang)
    if min(n_train, n_val, n_test) < 0 or max_number < 0 or not 0.0 <= p_date <= 1.0:
        raise ValueError("split sizes and max_number must be >= 0 and p_date in [0, 1]")
    kinds = value_space(max_number)
    test = _draw(random.Random(f"paperzoo-builtin/{seed}/test"), n_test, kinds, p_date, set())
    val = _draw(random.Random(f"paperzoo-builtin/{seed}/val"), n_val, kinds, p_date, set(test))
    train = _draw(random.Random(f"paperzoo-builtin/{seed}/train"), n_train, kinds, p_date, set(test) | set(val))
    values = {"train": train, "val": val, "test": test}
    pairs = {k: [render(v, lang) for v in vs] for k, vs in values.items()}
    return BuiltinSplits(pairs["train"], pairs["val"], pairs["test"], values)


def task_info() -> dict[str, Any]:
    """Versions of the locale data behind the targets (a different CLDR may spell a target differently)."""
    import babel
    import num2words

    return {"babel": babel.__version__, "cldr": _cldr_version(), "num2words": getattr(num2words, "__version__", "?")}


def _cldr_version() -> str:
    try:
        from babel.core import get_global

        return str(get_global("version") or "?")  # pragma: no cover - depends on the Babel build
    except Exception:  # noqa: BLE001 - older Babel: no recorded CLDR version
        return "?"
