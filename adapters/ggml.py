"""llama.cpp's ggml RoPE (``ggml_rope_ext`` / ``ggml_rope_multi``) through ggml-python.

ggml-python (PyPI ``ggml-python``, 0.0.45: ggml 0.15.3, built from source) binds
every function of ``ggml.h`` with ctypes.  The adapter builds a one-node ggml
graph (the rope op) on the CPU backend and computes it; it holds no RoPE math,
only the translation and the argument computation llama.cpp's own converter
(``convert_hf_to_gguf.py`` + ``conversion/*.py``) and runtime
(``src/llama-context.cpp``, ``src/llama-model.cpp``, ``src/llama-graph.cpp``)
perform for an HF config, each function below citing its lines
(ggml-org/llama.cpp@0c1e57098, the snapshot llama-cpp-python 0.3.36 vendors;
ggml line numbers are ggml-python 0.0.45's ``vendor/ggml``).
docs/findings/ggml.md has the mapping table, the results and the findings.

Op-level translation (``ggml.h`` 1770-1860, ``ggml-cpu/ops.cpp`` 5710-6008):

* layout ``interleaved`` -> ``GGML_ROPE_TYPE_NORMAL`` (pairs (2i, 2i+1)),
  ``half`` -> ``GGML_ROPE_TYPE_NEOX`` (pairs (i, i + n_dims/2));
  ``rotary_dim`` -> ``n_dims`` (ggml copies features n_dims..head_dim);
* x (batch, heads, seq, head_dim) -> one tensor ne = (head_dim, heads,
  batch*seq, 1) with one int32 position per (row, token): llama.cpp's ubatch
  of ``batch`` sequences (positions are indexed by ne2 only, ops.cpp 5938);
* ``mrope_section`` (layout half) -> ``ggml_rope_multi`` mode MROPE (8) or,
  ``mrope_interleaved``, IMROPE (40, Qwen3-VL); positions as the 4 streams
  [t | h | w | e] with e = 0, as llama.cpp fills it for text tokens
  (``llm_graph_input_pos::set_input``, llama-graph.cpp 131-141);
* ``axial_axes=2`` (layout half, full rotary) -> ``ggml_rope_multi`` mode
  VISION (24), n_dims = head_dim/2, sections {d/4, d/4, d/4, d/4} and
  positions [a0 | a1 | a0 | a1], as mtmd's Qwen2-VL vision encoder calls it
  (tools/mtmd/models/qwen2vl.cpp 46; VISION restarts each section's frequency
  recurrence, ops.cpp 5767-5782, which is our per-axis schedule).

Precision: ggml forms theta in float32 (``theta *= theta_scale``, a running
product), keeps cos/sin in float32 and rotates in float32 for F16 tensors too
(``rotate_pairs``: to_f32, compute, from_f32): declared below.  F32 and F16
only: any other tensor type reaches ``GGML_ABORT`` (ops.cpp 6005), which
kills the process, so float64/bfloat16 are refused before ggml is touched, as
is every input that would trip a ``GGML_ASSERT``.
"""

from __future__ import annotations

import collections
import ctypes
import math
import threading

import numpy as np

from ropeconf.conformance.adapter import Adapter, Capabilities, Numerics, Unsupported

_NP = {"float32": np.float32, "float16": np.float16}
_INT32 = (-(2 ** 31), 2 ** 31 - 1)
# llama-hparams.h 161-162: the YaRN betas every arch but grok/mistral3 runs with
_LLAMA_BETA_FAST, _LLAMA_BETA_SLOW = 32.0, 1.0
_CTX_PAD = 256  # llama-context.cpp 290: cparams.n_ctx = GGML_PAD(cparams.n_ctx, 256)


def _f32(v) -> np.float32:
    return np.float32(v)


def _logf(v) -> np.float32:
    return _f32(math.log(float(v)))


# ----------------------------------------------------------------------------- llama.cpp's argument math
def freq_scale_of(factor: float) -> np.float32:
    """llama-model.cpp 1428-1429: rope_freq_scale_train = 1.0f/ropescale (factor stored as GGUF float32)."""
    return _f32(_f32(1.0) / _f32(factor))


def _get_mscale(scale: np.float32, mscale: np.float32) -> np.float32:
    """llama-context.cpp 179-181: scale <= 1.0f ? 1.0f : (0.1f * mscale * logf(scale) + 1.0f)."""
    if scale <= _f32(1.0):
        return _f32(1.0)
    return _f32(_f32(_f32(_f32(0.1) * mscale) * _logf(scale)) + _f32(1.0))


def yarn_attn_factor(spec) -> np.float32:
    """The attn_factor llama.cpp passes to ggml for a YaRN GGUF (llama-context.cpp 177-214).

    With ext_factor != 0 the runtime *overwrites* cparams.yarn_attn_factor (any GGUF
    ``yarn_attn_factor`` key, i.e. HF ``attention_factor``, is lost): get_mscale(factor, 1),
    or, when the GGUF has rope_yarn_log_mul = M != 0 (deepseek.py 382-386 writes 0.1*M from HF
    ``mscale_all_dim``, deepseek2.cpp 34-37 divides by 0.1f), get_mscale(factor, m)/get_mscale(factor, M)
    with m = 1, or m = M for the DEEPSEEK2 arch when M != 1 (l. 185-198): exactly 1 on that arch,
    whatever HF's ``mscale``.  Then ``*= 1/(1 + 0.1f*logf(factor))`` cancels the factor ggml's
    rope_yarn multiplies back in (l. 211, ops.cpp 5728), and ``*= rope_attn_factor`` (1: not
    written for YaRN, base.py 1470-1483).
    """
    factor = _f32(_f32(1.0) / freq_scale_of(spec.factor))
    if spec.mscale_all_dim:  # a DeepSeek-2 config: rope_yarn_log_mul = M != 0
        M = _f32(_f32(0.1 * spec.mscale_all_dim) / _f32(0.1))
        m = M if M != _f32(1.0) else _f32(1.0)   # LLM_ARCH_DEEPSEEK2 branch
        att = _f32(_get_mscale(factor, m) / _get_mscale(factor, M))
    else:
        att = _get_mscale(factor, _f32(1.0))
    return _f32(att * _f32(_f32(1.0) / _f32(_f32(1.0) + _f32(_f32(0.1) * _logf(factor)))))


def longrope_scale(spec) -> float:
    """phi.py 178-188: scale = max_position_embeddings / original_max_position_embeddings.

    A spec without max_position_embeddings stands for the config whose max_position_embeddings
    is factor * L0 (HF v5 derives factor that way, reference/frequencies.py longrope_factor).
    """
    if spec.max_position_embeddings is not None:
        return spec.max_position_embeddings / spec.original_max_position_embeddings
    return float(spec.factor)


def longrope_attn_factor(spec) -> np.float32:
    """phi.py 193-200: sqrt(1 + log(scale)/log(L0)) if scale > 1 else 1 (Python double, written as the GGUF
    float32 ``rope.scaling.attn_factor``, read at llama-model.cpp 1431, multiplied in at llama-context.cpp 214);
    HF ``attention_factor`` is not read."""
    scale, L0 = longrope_scale(spec), spec.original_max_position_embeddings
    a = math.sqrt(1 + math.log(scale) / math.log(L0)) if scale > 1.0 else 1.0
    return _f32(_f32(1.0) * _f32(a))   # cparams.yarn_attn_factor (1.0f) *= hparams.rope_attn_factor


def llama3_rope_freqs(spec) -> np.ndarray:
    """The ``rope_freqs`` tensor of conversion/llama.py 298-326 (LlamaModel.generate_extra_tensors).

    A NumPy float32 replay of the converter's torch float32 statements (``c / t`` on a 0-d float32
    tensor is ``t.reciprocal() * c``; Python scalars meet float32 tensors as float32); bitwise equal
    to running them with torch (tests/test_adapter_ggml.py checks it where torch is installed).
    ``dim`` is head_dim, as in the converter.
    """
    f = np.float32
    base, dim, factor = spec.rope_theta, spec.head_dim, spec.factor
    lo, hi, L0 = spec.low_freq_factor, spec.high_freq_factor, spec.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = L0 / lo, L0 / hi
    freqs = f(1.0) / (f(base) ** (np.arange(0, dim, 2, dtype=np.float32) / f(dim)))
    out = []
    for freq in freqs:
        wavelen = (f(1.0) / freq) * f(2 * math.pi)
        if wavelen < f(high_freq_wavelen):
            out.append(f(1.0))
        elif wavelen > f(low_freq_wavelen):
            out.append(f(factor))
        else:
            smooth = ((f(1.0) / wavelen) * f(L0) - f(lo)) / f(hi - lo)
            out.append(f(1.0) / ((f(1.0) - smooth) / f(factor) + smooth))
    return np.array(out, dtype=np.float32)


def ntk_freq_base(spec) -> float:
    """conversion/hunyuan.py 97-101 / 261-265 (HF 'dynamic' + alpha, the only static NTK llama.cpp's converter
    writes): freq_base = base * alpha ** (dim / (dim - 2)), dim = head_dim, Python double -> GGUF float32."""
    dim = spec.head_dim
    return spec.rope_theta * (spec.factor ** (dim / (dim - 2)))


def _ctx_pad(n: int) -> int:
    return (n + _CTX_PAD - 1) // _CTX_PAD * _CTX_PAD


def longrope_uses_long(spec, positions: np.ndarray) -> bool:
    """llama_model::get_rope_factors (llama-model.cpp 2337-2350): rope_long iff n_ctx_seq > n_ctx_orig_yarn.

    The adapter models the smallest llama.cpp context that holds the call (one per call, unified KV:
    n_ctx_seq = n_ctx = GGML_PAD(max(positions) + 1, 256), llama-context.cpp 290-293).
    """
    n = int(np.max(positions)) + 1 if np.size(positions) else 1
    return _ctx_pad(n) > spec.original_max_position_embeddings


# ----------------------------------------------------------------------------- the adapter
class GgmlRope(Adapter):
    name = "ggml"
    distribution = "ggml-python"
    requires = ("ggml",)
    capabilities = Capabilities(
        rope_types=("default", "linear", "ntk", "yarn", "longrope", "llama3"),
        layouts=("half", "interleaved"),
        dtypes=("float32", "float16"),
        devices=("cpu",),
        freqs_for=("lang",),
        partial=True, xpos=False, axial=True, mrope=True,
        positions="arbitrary",
        max_position=_INT32[1],          # int32 positions (ggml_rope_impl asserts an I32 vector)
    )
    # float32 angles (running product), float32 cos/sin and rotation for F16 tensors too (ops.cpp 5822-5838)
    precision = Numerics(angle_dtype="float32", compute_dtype="float32")

    def __init__(self, n_threads: int = 1, cache_size: int = 32) -> None:
        # One thread: rows are independent and bitwise identical for any thread count; test-sized graphs
        # cost far more in OpenMP start-up than they gain.
        self.n_threads = n_threads
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what llama.cpp can express
    def why_unsupported(self, spec, dtype, device, positions=None):
        why = super().why_unsupported(spec, dtype, device, positions)
        if why:
            return self._explain(why, spec, dtype)
        if spec.head_dim % 2:
            return ("odd head_dim: ggml's pass-through loop copies features in pairs up to ne0 and so writes one "
                    "element past every row (ggml-cpu/ops.cpp 5975-5980); with more than one thread that races "
                    "with the next row, with one it writes past the tensor (llama.cpp head sizes are even)")
        if spec.axial_axes:
            if spec.axial_axes != 2:
                return "axial_axes != 2: GGML_ROPE_TYPE_VISION is the 2-D layout mtmd uses"
            if spec.layout != "half" or spec.rotary_dim != spec.head_dim:
                return ("axial needs layout 'half' and rotary_dim == head_dim: VISION rotates pairs (i, i + d/2) "
                        "over the whole head (ops.cpp 5910 asserts n_dims == ne0/2)")
            if spec.rope_type != "default":
                return (f"axial with rope_type {spec.rope_type!r}: mtmd's vision encoders call ggml_rope_multi "
                        "with freq_scale 1, ext_factor 0, attn_factor 1 (e.g. tools/mtmd/models/dotsocr.cpp 15-18)")
        if spec.mrope_section is not None:
            if spec.layout != "half":
                return "mrope with layout 'interleaved': MROPE/IMROPE always pair (i, i + n_dims/2) (ops.cpp 5961-5965)"
            if len(spec.mrope_section) > 4:
                return "more than 4 mrope sections (GGML_MROPE_SECTIONS = 4)"
            if not any(spec.mrope_section[:3]):
                return "mrope sections t, h and w all 0: ggml asserts one of them > 0 (ops.cpp 5906)"
            if spec.mrope_interleaved and len(spec.mrope_section) != 3:
                return "mrope_interleaved with other than 3 sections: IMROPE is Qwen3-VL's t/h/w rule"
            if spec.rope_type not in ("default", "linear", "yarn"):
                return (f"mrope with rope_type {spec.rope_type!r}: llama.cpp's M-RoPE graphs pass no freq "
                        "factors (src/models/qwen2vl.cpp 78-88)")
        t = spec.rope_type
        if t == "ntk" and spec.rotary_dim != spec.head_dim:
            return "ntk with partial rotation: the converter's NTK-alpha exponent dim/(dim-2) uses head_dim"
        if t == "llama3" and spec.rotary_dim != spec.head_dim:
            return "llama3 with partial rotation: conversion/llama.py computes rope_freqs over head_dim"
        if t == "longrope":
            if spec.longrope_switch != "sequence":
                return ("longrope_switch 'position': llama.cpp picks one factor set per context "
                        "(llama_model::get_rope_factors, n_ctx_seq > n_ctx_orig_yarn), never per position")
            if spec.factor is not None and spec.max_position_embeddings is not None and \
                    not math.isclose(spec.factor, spec.max_position_embeddings / spec.original_max_position_embeddings,
                                     rel_tol=1e-12):
                return ("longrope factor != max_position_embeddings / original_max_position_embeddings: phi.py "
                        "takes the attention factor's scale from the latter, HF from factor")
            if positions is not None and np.size(positions):
                n = int(np.max(positions)) + 1
                L0 = spec.original_max_position_embeddings
                if n <= L0 < _ctx_pad(n):
                    return (f"longrope call reaching position {n - 1} <= L0 = {L0}: llama.cpp's smallest context for "
                            f"it is {_ctx_pad(n)} tokens (n_ctx padded to 256, llama-context.cpp 290) > L0, so it "
                            "uses the long factors (get_rope_factors) where HF uses the short ones")
        if positions is not None and np.size(positions) and int(np.min(positions)) < _INT32[0]:
            return "positions below int32"
        return None

    @staticmethod
    def _explain(why: str, spec, dtype) -> str:
        """The capability check's reason, with the llama.cpp/ggml fact behind it."""
        extra = ""
        if why.startswith("dtype="):
            extra = (": ggml's CPU rope takes F32 and F16 tensors only; any other type reaches GGML_ABORT "
                     "(ggml-cpu/ops.cpp 6005), which kills the process")
        elif why.startswith("rope_type=dynamic"):
            extra = (": llama.cpp has no length-dependent NTK; its converter turns HF 'dynamic' into a static "
                     "NTK-alpha freq_base for HunYuan only (conversion/hunyuan.py 94-101)")
        elif why.startswith("freqs_for="):
            extra = ": ggml's schedule is freq_base^(-2i/n_dims) only"
        elif why.startswith("xpos"):
            extra = ": ggml_rope_ext has no xPos scale"
        elif why.startswith("device="):
            extra = ": ggml-python here is the CPU backend"
        return why + extra

    # ------------------------------------------------------------------ spec -> ggml arguments
    def rope_args(self, spec, positions: np.ndarray) -> dict:
        """ggml_rope_ext / ggml_rope_multi arguments llama.cpp would pass for ``spec`` (and this call)."""
        import ggml

        a = dict(n_dims=spec.rotary_dim, mode=ggml.GGML_ROPE_TYPE_NEOX if spec.layout == "half"
                 else ggml.GGML_ROPE_TYPE_NORMAL, n_ctx_orig=int(spec.original_max_position_embeddings or 0),
                 freq_base=float(spec.rope_theta), freq_scale=1.0, ext_factor=0.0, attn_factor=1.0,
                 beta_fast=_LLAMA_BETA_FAST, beta_slow=_LLAMA_BETA_SLOW, freq_factors=None, sections=None)
        t = spec.rope_type
        if t == "linear":      # base.py 1466-1469: rope.scaling.type linear + factor
            a["freq_scale"] = float(freq_scale_of(spec.factor))
        elif t == "ntk":
            a["freq_base"] = ntk_freq_base(spec)
        elif t == "yarn":      # base.py 1470-1483 + llama-context.cpp 171-214
            a.update(self._yarn_args(spec))
        elif t == "longrope":  # phi.py 175-210: rope_factors_long/short + rope.scaling.attn_factor
            ff = spec.long_factor if longrope_uses_long(spec, positions) else spec.short_factor
            a["freq_factors"] = np.asarray(ff, dtype=np.float32)
            a["attn_factor"] = float(longrope_attn_factor(spec))
        elif t == "llama3":    # conversion/llama.py 298-326: rope_freqs; no scaling type -> freq_scale 1
            a["freq_factors"] = llama3_rope_freqs(spec)
        if spec.mrope_section is not None:    # base.py 1497-1503: rope.dimension_sections padded to 4
            a["sections"] = list(spec.mrope_section) + [0] * (4 - len(spec.mrope_section))
            a["mode"] = ggml.GGML_ROPE_TYPE_IMROPE if spec.mrope_interleaved else ggml.GGML_ROPE_TYPE_MROPE
        elif spec.axial_axes:                 # tools/mtmd/models/qwen2vl.cpp 46 + the rope_multi call
            d = spec.head_dim
            a.update(sections=[d // 4] * 4, mode=ggml.GGML_ROPE_TYPE_VISION, n_dims=d // 2)
        return a

    @staticmethod
    def _yarn_args(spec) -> dict:
        """freq_scale 1/factor, ext_factor 1 (llama-context.cpp 173-175), n_ctx_orig = L0
        (rope.scaling.original_context_length), attn_factor per :func:`yarn_attn_factor`.

        beta_fast/beta_slow: the spec's.  llama.cpp takes them from the context parameters when set
        (``llama_context_params.yarn_beta_fast/slow``, ``--yarn-beta-fast/--yarn-beta-slow``;
        llama-context.cpp 116-117), else from hparams: 32 and 1 (llama-hparams.h 161-162) unless the arch
        reads the GGUF keys the converter writes (conversion/base.py 1479-1482; only grok.cpp 26-27 and
        mistral3.cpp 7-8 do).  Config betas other than 32/1 on another arch therefore need the runtime
        flags (docs/findings/ggml.md).  HF ``truncate`` is not written or read: ggml_rope_yarn_corr_dims
        always floors/ceils (ggml.c 4334-4342)."""
        return dict(freq_scale=float(freq_scale_of(spec.factor)), ext_factor=1.0,
                    attn_factor=float(yarn_attn_factor(spec)),
                    beta_fast=float(spec.beta_fast), beta_slow=float(spec.beta_slow))

    def positions_of(self, spec, positions: np.ndarray) -> np.ndarray:
        """The int32 position vector ggml reads: one per token, or 4 streams [s0 | s1 | s2 | s3] (ops.cpp 5938-5950)."""
        p = np.asarray(positions, dtype=np.int64)
        tokens = p.shape[0] * p.shape[1]
        if spec.mrope_section is None and not spec.axial_axes:
            return p.reshape(tokens).astype(np.int32)
        p = p.reshape(tokens, spec.n_streams)
        streams = [p[:, k] for k in range(spec.n_streams)]
        if spec.axial_axes:
            streams = [streams[0], streams[1], streams[0], streams[1]]
        else:   # text tokens: the 4th ("e") stream is 0 (llama-graph.cpp 131-141, "4th dim is all 0")
            streams += [np.zeros(tokens, np.int64)] * (4 - len(streams))
        return np.concatenate(streams).astype(np.int32)

    # ------------------------------------------------------------------ ggml graphs (one context per shape)
    def _graph(self, key, dtype: str, d: int, h: int, tokens: int, n_pos: int, ff_len: int, args: dict) -> dict:
        import ggml

        ent = self._cache.get(key)
        if ent is not None:
            self._cache.move_to_end(key)
            return ent
        gtype = ggml.GGML_TYPE_F32 if dtype == "float32" else ggml.GGML_TYPE_F16
        nbytes = d * h * tokens * np.dtype(_NP[dtype]).itemsize
        mem = 2 * nbytes + 4 * n_pos + 4 * ff_len + 8 * ggml.ggml_tensor_overhead() + ggml.ggml_graph_overhead() + 4096
        ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=mem, mem_buffer=None, no_alloc=False))
        if not ctx:
            raise MemoryError(f"ggml_init({mem} bytes) failed")
        x = ggml.ggml_new_tensor_4d(ctx, gtype, d, h, tokens, 1)
        pos = ggml.ggml_new_tensor_1d(ctx, ggml.GGML_TYPE_I32, n_pos)
        ff = ggml.ggml_new_tensor_1d(ctx, ggml.GGML_TYPE_F32, ff_len) if ff_len else None
        rest = (args["mode"], args["n_ctx_orig"], args["freq_base"], args["freq_scale"], args["ext_factor"],
                args["attn_factor"], args["beta_fast"], args["beta_slow"])
        if args["sections"] is not None:
            out = ggml.ggml_rope_multi(ctx, x, pos, ff, args["n_dims"], (ctypes.c_int * 4)(*args["sections"]), *rest)
        else:
            out = ggml.ggml_rope_ext(ctx, x, pos, ff, args["n_dims"], *rest)
        gf = ggml.ggml_new_graph(ctx)
        ggml.ggml_build_forward_expand(gf, out)
        # ggml_graph_compute_with_ctx would take a new work buffer from the context on every call (ggml-cpu.c
        # 3385-3391) and exhaust a reused context: plan once, with a work buffer owned here
        plan = ggml.ggml_graph_plan(gf, self.n_threads, None)
        work = (ctypes.c_uint8 * max(int(plan.work_size), 1))()
        plan.work_data = ctypes.cast(work, ctypes.POINTER(ctypes.c_uint8))
        ent = dict(ctx=ctx, x=x, pos=pos, ff=ff, out=out, gf=gf, plan=plan, work=work)
        self._cache[key] = ent
        while len(self._cache) > self._cache_size:
            ggml.ggml_free(self._cache.popitem(last=False)[1]["ctx"])
        return ent

    @staticmethod
    def _view(tensor, np_dtype, count: int) -> np.ndarray:
        import ggml

        buf = (ctypes.c_uint8 * (count * np.dtype(np_dtype).itemsize)).from_address(ggml.ggml_get_data(tensor))
        return np.frombuffer(buf, dtype=np_dtype, count=count)

    def compute(self, x: np.ndarray, pos: np.ndarray, args: dict, dtype: str) -> np.ndarray:
        """Run the rope op on x (tokens, heads, head_dim) in ``dtype`` with int32 ``pos`` and ``args``."""
        import ggml

        tokens, h, d = x.shape
        ff = args["freq_factors"]
        ff_len = 0
        if ff is not None:
            # ggml's cache loop reads freq_factors[i0/2] for every i0 < ne0 (ops.cpp 5740, 5765), not only
            # i0 < n_dims (ggml.c 4160 asserts ne[0] >= n_dims/2): pad to head_dim/2 (the tail is unused)
            ff_len = max(d // 2, len(ff))
            ff = np.concatenate([ff, np.ones(ff_len - len(ff), np.float32)]).astype(np.float32)
        key = (dtype, d, h, tokens, len(pos), ff_len,
               tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(args.items())
                     if k != "freq_factors"))
        with self._lock:
            ent = self._graph(key, dtype, d, h, tokens, len(pos), ff_len, args)
            self._view(ent["x"], _NP[dtype], x.size)[:] = x.reshape(-1)
            self._view(ent["pos"], np.int32, len(pos))[:] = pos
            if ff_len:
                self._view(ent["ff"], np.float32, ff_len)[:] = ff
            rc = ggml.ggml_graph_compute(ent["gf"], ctypes.byref(ent["plan"]))
            if rc != 0:
                raise RuntimeError(f"ggml_graph_compute returned status {rc}")
            return self._view(ent["out"], _NP[dtype], x.size).copy().reshape(tokens, h, d)

    def call(self, x, positions, spec, *, dtype, device="cpu", role="query"):
        if dtype not in _NP:   # never hand ggml a type it aborts on, whatever the caller checked
            raise Unsupported(f"dtype {dtype}: ggml aborts the process on it")
        positions = np.asarray(positions)
        x = np.asarray(x)
        b, h, s, d = x.shape
        if b * s == 0 or h == 0:
            return x.astype(_NP[dtype], copy=True)
        # (batch, heads, seq, d) -> (batch*seq, heads, d) = ggml ne (d, heads, tokens)
        xt = np.ascontiguousarray(np.transpose(x, (0, 2, 1, 3)).astype(_NP[dtype], copy=False)).reshape(b * s, h, d)
        out = self.compute(xt, self.positions_of(spec, positions), self.rope_args(spec, positions), dtype)
        return np.ascontiguousarray(np.transpose(out.reshape(b, s, h, d), (0, 2, 1, 3)))

    def close(self) -> None:
        if not self._cache:
            return
        import ggml

        with self._lock:
            while self._cache:
                ggml.ggml_free(self._cache.popitem()[1]["ctx"])

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
