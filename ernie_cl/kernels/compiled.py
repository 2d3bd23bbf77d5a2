"""Building ernie-cl's CPU kernels (``csrc/``: dropout masks, cross-entropy, attention, residual LayerNorm, bias + GELU) on first use, once per machine.

torch's extension builder compiles the sources with the machine's g++ (which DeepSpeed's CPU
backend needs anyway) into ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``); the
build is reused by every later process. It is compiled for this CPU (``-march=native``), so the
build's name carries a fingerprint of the CPU's model and flags: a cache on a disk that moves to
another host is never loaded there. ``-fopenmp``: ATen's ``parallel_for`` is OpenMP in its headers
(without the flag it runs on one thread); the library links ``libgomp.so.1``, which is torch's own
copy once torch is loaded, so one thread pool and ``torch.set_num_threads`` govern the kernels too.
When the build fails (no compiler), ``load`` returns False and callers use their torch-op
equivalents, which give the same results, more slowly.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from pathlib import Path

import torch

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("hash_dropout.cpp", "cross_entropy.cpp", "attention.cpp", "residual_layer_norm.cpp", "bias_gelu.cpp")]
HEADERS = [Path(__file__).parent / "csrc" / "counter_hash.h"]
DISABLE_ENV = "ERNIE_CL_NO_KERNELS"  # set to 1: never build or load, use the torch-op paths


@functools.cache
def _cpu_lines() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(sorted({line for line in f if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor()


def _cpu_fingerprint() -> str:
    return hashlib.sha1((platform.machine() + _cpu_lines()).encode()).hexdigest()[:10]


def _vector_flags() -> list[str]:
    """ATen's vector width for this CPU, as torch's own kernels pick it: its ``Vectorized<float>``
    (and the SLEEF exp that torch exports) for AVX-512 or AVX2, else its portable fallback."""
    flags = set(_cpu_lines().split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma"} <= flags:
        return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _compile_flags() -> list[str]:
    return ["-O3", "-march=native", "-fopenmp", *_vector_flags()]


def _build_name() -> str:
    digest = hashlib.sha1(b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(_compile_flags()).encode()).hexdigest()[:8]
    return f"ernie_cl_kernels_{digest}_{_cpu_fingerprint()}"


@functools.cache
def load() -> bool:
    """True when ``torch.ops.ernie_cl`` holds the kernels (building them the first time; torch's
    builder locks the build folder, so concurrent first calls build once)."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0") or sys.byteorder != "little":
        return False
    try:
        from torch.utils import cpp_extension

        name = _build_name()
        if not _built(cpp_extension, name):
            print("ernie-cl: compiling its CPU kernels (dropout, cross-entropy, attention, LayerNorm, GELU; once per machine, about 10-20 s)",
                  file=sys.stderr, flush=True)
        cpp_extension.load(name=name, sources=[str(p) for p in SOURCES], is_python_module=False,
                           extra_cflags=_compile_flags(), extra_ldflags=["-fopenmp"], verbose=False)
        return all(hasattr(torch.ops.ernie_cl, op) for op in ("hash_dropout", "cross_entropy_forward", "attention_forward", "residual_layer_norm_forward",
                                                          "bias_gelu_forward"))
    except Exception as exc:  # no compiler, no ninja, a read-only cache: the torch-op paths still work
        print(f"ernie-cl: CPU kernels unavailable ({str(exc).splitlines()[0][:200]}); using torch ops", file=sys.stderr)
        return False


def _built(cpp_extension, name: str) -> bool:
    """Whether a build is already cached (it only decides whether to print the notice)."""
    try:
        return (Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    except Exception:  # a private helper of torch's: if it moves, say nothing
        return True
