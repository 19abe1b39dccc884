"""retain_freed_memory: freed activation memory stays in the process for the next step, not returned to the kernel."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from paperzoo.train.allocator import retain_freed_memory

# Resident memory kept after a 16 MiB activation-sized tensor is freed, in a fresh process (the setting is
# process-wide). Without the setting glibc mmaps the block (above its 128 KiB start threshold) and unmaps it on
# free; with it the block comes from the heap and stays there for the next step to reuse without faulting in.
# (The page-fault saving over whole training steps depends on the heap's history and is measured in
# BENCHMARKS.md, not asserted here.)
SCRIPT = """
import os, sys, torch
from paperzoo.train.allocator import retain_freed_memory
if sys.argv[1] == "on":
    assert retain_freed_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
x = torch.ones(4 << 20)  # 16 MiB, every page touched
del x
print((resident() - before) >> 20)
"""


def _kept_mib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_a_freed_activation_block_stays_resident_for_reuse_only_with_retain_freed_memory():
    off, on = _kept_mib("off"), _kept_mib("on")
    assert on >= 15 and off <= 4, f"MiB kept resident after freeing 16 MiB: {off} without, {on} with the setting"


def test_retain_freed_memory_is_idempotent_and_reports_whether_it_applied():
    first = retain_freed_memory()
    assert retain_freed_memory() is first
    assert first is GLIBC
