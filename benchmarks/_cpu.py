"""The CPU a benchmark ran on: its model, core count and the flags its kernels depend on."""

from __future__ import annotations

import os
import platform
import subprocess

RELEVANT_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                  "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """lscpu's model name, the CPU count and every flag."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}; {os.cpu_count()} CPUs; flags: {fields.get('Flags', '').strip()}"


def cpu_line() -> str:
    """The CPU model and core count with only the flags that matter to the kernels (SIMD, VNNI, bf16, AMX)."""
    model, _, flags = cpu_description().partition("; flags: ")
    found = set(flags.split())
    return f"{model}; flags: {' '.join(f for f in RELEVANT_FLAGS if f in found) or '(none of interest)'}"
