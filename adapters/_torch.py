"""NumPy <-> torch conversion shared by the torch-based adapters (no RoPE math here)."""

from __future__ import annotations

import numpy as np

from ropeconf.reference.dtypes import check, numpy_dtype


def torch_dtype(name: str):
    import torch

    return getattr(torch, check(name))


def to_torch(x: np.ndarray, dtype: str, device: str = "cpu"):
    """The array in the tested dtype as a torch tensor on ``device`` (bf16 bit-exact)."""
    import torch

    if dtype == "bfloat16":
        t = torch.from_numpy(np.ascontiguousarray(x).view(np.uint16).astype(np.int16)).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))
    return t.to(device)


def to_numpy(t) -> np.ndarray:
    """A torch tensor as a NumPy array of the same dtype (bfloat16 as ml_dtypes.bfloat16, bit-exact)."""
    import torch

    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
    return t.numpy()


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False
