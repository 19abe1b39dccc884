"""Keep freed memory in the process, so a training step does not page-fault its activations in again.

PyTorch's CPU allocator is the C library's ``malloc``. glibc serves a request above ``M_MMAP_THRESHOLD`` (128 KiB
at start, raised dynamically up to 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``, and it
gives the top of the heap back (``M_TRIM_THRESHOLD``) once enough of it is free. A training step allocates and
frees the same few-MiB activations every iteration (a (128, 16, 28, 28) bf16 map is 3.2 MiB), so each one is
mapped again and every 4 KiB page of it faults on first touch; in a virtual machine a fault costs microseconds.
On the 2-core machine a bare loop of ResNet-18/4 steps on Fashion-MNIST-sized batches took 335,000-520,000 minor
faults in 35 steps; with fixed thresholds the freed blocks stay in the heap and are reused (~90,000 faults, the
loop ~1.25x faster). Inside the trainer, whose other allocations keep more of the heap in use, a run of the
default recipe went from 4.8 million faults to 0.17 million and ~3 % faster on that machine (BENCHMARKS.md).
This is what PyTorch's CUDA caching allocator does for GPU memory, and what the jemalloc/tcmalloc preloads of
Intel's CPU tuning guide do, without an ``LD_PRELOAD``.

The cost is memory: the process keeps its peak heap instead of returning it between steps. The setting is
process-wide and stays (glibc has no way to read the old values back); elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): larger blocks are mmapped
TRIM_THRESHOLD = 1 << 30  # give the heap's top back to the kernel only when 1 GiB of it is free

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring) once per process.

    Returns True where they are set (Linux with glibc), False elsewhere. Idempotent.
    """
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and other C libraries without mallopt
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            # mallopt returns 1 on success; setting either threshold also turns glibc's dynamic adjustment off
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                           TRIM_THRESHOLD))
    return _applied
