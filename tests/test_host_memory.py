"""A CPU run's large buffers are reused, not page-faulted in again at every step (sweeper/host_memory.py)."""

import subprocess
import sys

import pytest

from sweeper import host_memory

# In a fresh process: allocate, fill and free a 64 MiB tensor again and again, as a step does
# with its activations, and count the page faults of the last 10 times (glibc settles the heap
# in the first few).
SCRIPT = """
import resource, sys, torch
from sweeper import host_memory
if sys.argv[1] == "keep":
    assert host_memory.keep_freed_buffers()
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 << 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not host_memory.available(), reason="needs glibc's mallopt")
def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    default, kept = faults("default"), faults("keep")
    assert default > 10 * 16_000  # glibc's default: each 64 MiB block is mapped afresh (16k pages)
    assert kept < default / 10  # kept: reused
