"""training.reuse_heap: glibc keeps the memory a step frees (ernie_cl/training/allocator.py)."""

import json
import subprocess
import sys

import pytest

# A training step's pattern, shrunk: large tensors allocated, written and freed, in an order that
# repeats every step, small ones in between. Minor page faults count the fresh kernel pages they landed on.
PROBE = """
import json, resource, sys
import torch
if sys.argv[1] == "reuse":
    from ernie_cl.training.allocator import keep_freed_memory
    assert keep_freed_memory()
elif sys.argv[1].startswith("engine"):  # the trainer's path: the engine is created with the schedule's setting
    from ernie_cl.config.schedule import TrainingConfig
    from ernie_cl.training.engine import create_engine
    training = TrainingConfig(reuse_heap=sys.argv[1] == "engine-reuse")
    create_engine(torch.nn.Linear(4, 4), {"zero_optimization": {"stage": 0}}, training, total_steps=1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    logits = torch.empty(10 * 2**20).fill_(1.0)  # 40 MiB: above glibc's largest dynamic mmap threshold
    grad = torch.empty(3 * 2**20).fill_(2.0)
    small = torch.ones(1000)
    del logits
    out = torch.empty(6 * 2**20).fill_(1.0)
for _ in range(10):  # warm-up: the heap settles
    step()
before = faults()
for _ in range(20):
    step()
print(json.dumps({"faults_per_step": (faults() - before) / 20}))
"""


def faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])["faults_per_step"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_are_reused_instead_of_new_kernel_pages():
    pages = 40 * 2**20 / 4096  # the 40 MiB tensor's 10,240 pages of 4 KiB
    default, reused = faults_per_step("default"), faults_per_step("reuse")
    assert default > 0.25 * pages  # negative control: by default the large tensors land on new pages every step
    assert reused < 0.02 * pages  # kept: each step reuses the blocks the previous one freed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_engine_applies_training_reuse_heap():
    pages = 40 * 2**20 / 4096
    assert faults_per_step("engine-reuse") < 0.02 * pages
    assert faults_per_step("engine-release") > 0.25 * pages  # reuse_heap: false leaves glibc's defaults


ARENAS = """
import ctypes, sys, threading
libc = ctypes.CDLL(None)
if sys.argv[1] == "reuse":
    from ernie_cl.training.allocator import keep_freed_memory
    keep_freed_memory()
libc.malloc.restype = ctypes.c_void_p
worker = threading.Thread(target=lambda: libc.malloc(1 << 20))  # a thread that first allocates now
worker.start(); worker.join()
libc.malloc_stats()  # to stderr: one "Arena N:" block per arena
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_threads_that_start_later_share_the_main_arena():
    def arenas(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, check=True)
        return sum(line.startswith("Arena ") for line in result.stderr.splitlines())
    assert arenas("default") >= 2  # negative control: by default a new thread gets its own arena
    assert arenas("reuse") == 1


TRIM = """
import json, sys
import torch
from ernie_cl.training.allocator import keep_freed_memory, release_free_memory
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
keep_freed_memory()
blocks = [torch.ones(2**20 * (8 + i)) for i in range(8)]  # 32-60 MiB each, ~370 MiB in the heap
del blocks
before = resident_mb()
if sys.argv[1] == "trim":
    assert release_free_memory()
print(json.dumps({"freed_mb": before - resident_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_hands_the_kept_heap_back():
    def freed(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", TRIM, mode], capture_output=True, text=True, check=True).stdout
        return json.loads(out.splitlines()[-1])["freed_mb"]
    assert freed("keep") < 20  # negative control: with the thresholds raised, freed tensors stay resident
    assert freed("trim") > 300


def test_keep_freed_memory_says_whether_glibc_took_it():
    from ernie_cl.training.allocator import keep_freed_memory

    assert keep_freed_memory() is (sys.platform.startswith("linux"))
