"""How the reference runs, not what it computes: thread pool, cache-sized chunks, in-place rotation slabs.

Every function here applies the same elementwise arithmetic as the readable path in
``rotary.py`` to pieces of the arrays, so results are bit-identical whatever the
chunking or thread count (the golden corpus regenerates byte for byte).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

_POOL = None
MIN_PARALLEL = 1 << 16  # elements: below this, threads cost more than they save
CHUNK = 1 << 15         # elements per cos/sin chunk (256 KiB per temporary)
BLOCK = 1 << 15         # elements per half-slab of the rotation: temporaries stay in cache


def threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def pool():
    """One shared thread pool: NumPy ufuncs release the GIL on large arrays."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(threads(), thread_name_prefix="ropeconf-ref")
    return _POOL


def native_module(x):
    """NumPy or CuPy itself (ufuncs with ``out=``) for the in-place paths, else None."""
    import array_api_compat

    if array_api_compat.is_numpy_array(x):
        return np
    if array_api_compat.is_cupy_array(x):
        import cupy

        return cupy
    return None


def map_rows(fn: Callable, p, elems: int, row_elems: int):
    """``fn(p)`` -> (a, b), computed on row chunks of ``p`` across threads for large NumPy inputs.

    ``elems``: size of the work; ``row_elems``: elements per chunk row.  The ~30
    temporaries of the double-double pipeline then stay small (in cache, below
    malloc's mmap threshold).
    """
    if native_module(p) is not np or p.ndim < 1 or elems < 2 * CHUNK:
        return fn(p)
    rows = max(1, CHUNK // row_elems)
    chunks = [p[i:i + rows] for i in range(0, p.shape[0], rows)]
    n = threads()
    groups = [chunks[i::n] for i in range(n)] if len(chunks) >= n else [chunks]

    def work(group):
        return [fn(ch) for ch in group]

    done = list(pool().map(work, groups)) if len(groups) > 1 else [work(groups[0])]
    ordered = [None] * len(chunks)
    for g, res in enumerate(done):
        for j, r in enumerate(res):
            ordered[g + j * len(groups)] = r
    return np.concatenate([a for a, _ in ordered]), np.concatenate([b for _, b in ordered])


def rotate_into(x, c, s, r: int, half: bool, out=None):
    """(a c - b s, b c + a s) per pair of the first r features of x, written into ``out`` in slabs.

    The generic path streams five full-size temporaries through memory; here each
    slab's temporaries stay in cache, so the cost approaches one read of x and one
    write of the output.  The tail (features r..) is copied.
    """
    mod = native_module(x)
    h, d = r // 2, x.shape[-1]
    if out is None:
        out = mod.empty(x.shape, dtype=mod.float64)
    if r < d:
        out[..., r:] = x[..., r:]
    lead = x.shape[:-1]
    cb = mod.broadcast_to(c, lead + (h,))
    sb = mod.broadcast_to(s, lead + (h,))
    rows = max(1, BLOCK // max(h, 1))
    n_outer = int(np.prod(lead[:-1])) if len(lead) > 1 else 1
    seq = lead[-1] if lead else 1
    slabs = [idx + (slice(r0, r0 + rows),) for idx in (np.ndindex(*lead[:-1]) if n_outer else ())
             for r0 in range(0, seq, rows)]

    def work(part: list) -> None:
        tmp = mod.empty((min(rows, seq), h), dtype=mod.float64)
        for sl in part:
            xs, os_ = x[sl], out[sl]
            cs, ss = cb[sl], sb[sl]
            t = tmp[: xs.shape[0]]
            if half:
                a, b, oa, ob = xs[:, :h], xs[:, h:r], os_[:, :h], os_[:, h:r]
            else:
                a, b, oa, ob = xs[:, 0:r:2], xs[:, 1:r:2], os_[:, 0:r:2], os_[:, 1:r:2]
            mod.multiply(a, cs, out=oa)
            mod.multiply(b, ss, out=t)
            mod.subtract(oa, t, out=oa)
            mod.multiply(b, cs, out=ob)
            mod.multiply(a, ss, out=t)
            mod.add(ob, t, out=ob)

    n = threads() if mod is np and x.size >= MIN_PARALLEL else 1
    if n > 1 and len(slabs) > 1:
        list(pool().map(work, [slabs[i::n] for i in range(n)]))
    else:
        work(slabs)
    return out
