"""retain_freed_memory: a training step reuses its freed activation memory instead of page-faulting it in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from paperzoo.train.allocator import retain_freed_memory

# Minor page faults of three ResNet-20 training steps, in a fresh process (the setting is process-wide).
SCRIPT = """
import resource, sys, torch, torch.nn.functional as F
from paperzoo.registry import create_model
from paperzoo.train.allocator import retain_freed_memory
if sys.argv[1] == "on":
    assert retain_freed_memory()
torch.manual_seed(0); torch.set_num_threads(1)
m = create_model("resnet20", num_classes=10, in_chans=1)
x, y = torch.randn(64, 1, 28, 28), torch.randint(10, (64,))
def step():
    F.cross_entropy(m(x), y).backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_retained_memory_cuts_page_faults_of_training_steps_at_least_in_half():
    off, on = _faults("off"), _faults("on")
    assert on < off / 2, f"page faults per 3 steps: {off} without, {on} with retain_freed_memory"


def test_retain_freed_memory_is_idempotent_and_reports_whether_it_applied():
    first = retain_freed_memory()
    assert retain_freed_memory() is first
    assert first is GLIBC
