"""Small helpers shared by the CNN families."""

from __future__ import annotations


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going below ``round_limit * value``.

    This is the channel rounding of the MobileNet V2/V3 and EfficientNet reference code (hardware-friendly
    channel counts); the 10 % guard keeps a width multiplier from rounding a layer down too far.
    """
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def to_2tuple(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))
