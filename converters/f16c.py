"""float32 -> float16 with the CPU's own conversion instruction (x86-64 F16C), without importing torch.

A float16 conversion of the full model casts 995 M values. numpy's cast is a scalar loop (0.36 GB/s on the
2-core machine, 11 s of CPU); torch's is vectorised (3.2 GB/s) but importing torch costs 2.4 s and 250 MB.
The CPU converts 8 values per instruction (`vcvtps2ph`, round to nearest even): 9.4 GB/s, no import.

The loop below is 28 bytes of machine code (assembled from the listing next to it) placed in a page mapped
read+write, then made read+execute, and called through ctypes, which releases the GIL for the call. It is
only used where it can work (Linux on x86-64 with AVX and F16C) and where the page can be made executable;
`float16_cast()` returns None everywhere else, or when REMBERT_CONVERT_NO_F16C is set, and callers fall
back. The result is bit-identical to numpy's and torch's casts (IEEE round to nearest even; checked over
all 2^32 float32 inputs, NaNs stay NaN).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

# void cvt(const float *src /* rdi */, uint16_t *dst /* rsi */, size_t n /* rdx */), n > 0, n % 8 == 0
_CODE = bytes.fromhex(
    "c5fc1007"      # loop: vmovups   ymm0, [rdi]
    "c4e37d1d0600"  #       vcvtps2ph [rsi], ymm0, 0     (imm 0: round to nearest even)
    "4883c720"      #       add       rdi, 32
    "4883c610"      #       add       rsi, 16
    "4883ea08"      #       sub       rdx, 8
    "75e8"          #       jnz       loop
    "c5f877"        #       vzeroupper
    "c3"            #       ret
)
_LANES = 8
DISABLE_VARIABLE = "REMBERT_CONVERT_NO_F16C"  # set to anything to test or time the fallbacks

_cast: Callable[[np.ndarray], np.ndarray] | None = None
_tried = False
_page: mmap.mmap | None = None  # kept alive: the function lives in it


def float16_cast() -> Callable[[np.ndarray], np.ndarray] | None:
    """The hardware cast, or None where this machine or OS cannot run it (then use numpy or torch)."""
    global _cast, _tried
    if not _tried:
        _tried = True
        try:
            _cast = _load()
        except (OSError, ValueError, AttributeError):
            _cast = None
    return _cast


def _cpu_supports_f16c() -> bool:
    if os.environ.get(DISABLE_VARIABLE):
        return False
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return False  # the code follows the System V calling convention; flags come from /proc/cpuinfo
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return {"avx", "f16c"} <= flags
    return False


def _load() -> Callable[[np.ndarray], np.ndarray] | None:
    global _page
    if not _cpu_supports_f16c():
        return None
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    page.write(_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(address, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        return None  # a hardened kernel may refuse executable anonymous memory
    _page = page
    convert = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(address)

    def cast(values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=np.float32)
        out = np.empty(values.shape, np.float16)
        whole = values.size - values.size % _LANES
        if whole:
            convert(values.ctypes.data, out.ctypes.data, whole)
        if whole < values.size:
            with np.errstate(over="ignore"):
                out.reshape(-1)[whole:] = values.reshape(-1)[whole:].astype(np.float16)
        return out

    probe = np.array([1.0, -2.5, 65504.0, 65520.0, 2.0**-24, 2.0**-26, -np.inf, 1 / 3, 0.1], np.float32)
    with np.errstate(over="ignore"):
        expected = probe.astype(np.float16)
    if not np.array_equal(cast(probe).view(np.uint16), expected.view(np.uint16)):
        return None  # never seen; refuse rather than write different bytes
    return cast
