"""Built-in adapters: one short file per third-party implementation.

``BUILTIN`` maps the names used on the command line to ``module:attribute``;
modules are imported only when an adapter is used, so a missing or broken
library never breaks the others.
"""

BUILTIN = {
    # Hugging Face transformers (adapters/hf.py)
    "hf": "ropeconf.adapters.hf:HFTransformers",
    # rotary-embedding-torch (adapters/rotary_torch.py)
    "rotary-torch": "ropeconf.adapters.rotary_torch:RotaryTorch",
    "rotary-torch-cached-keys": "ropeconf.adapters.rotary_torch:RotaryTorchCachedKeys",
    "rotary-torch-learned": "ropeconf.adapters.rotary_torch:RotaryTorchLearned",
    # KerasHub RotaryEmbedding, one worker process per Keras backend (adapters/keras_hub.py)
    "keras-torch": "ropeconf.adapters.keras_hub:KerasHubTorch",
    "keras-jax": "ropeconf.adapters.keras_hub:KerasHubJax",
    "keras-tf": "ropeconf.adapters.keras_hub:KerasHubTensorflow",
    # Modular MAX graph API on CPU (adapters/max_graph.py)
    "max": "ropeconf.adapters.max_graph:MaxRotary",
    # zetascale, in its own environment (adapters/zeta.py)
    "zeta": "ropeconf.adapters.zeta:ZetaRotary",
    # ONNX family (adapters/onnx_ops.py): reference-built caches and conventional float32 caches
    "onnx-ref": "ropeconf.adapters.onnx_ops:OnnxReference",
    "onnx-ref-f32cache": "ropeconf.adapters.onnx_ops:OnnxReferenceF32Cache",
    "ort": "ropeconf.adapters.onnx_ops:OrtRotary",
    "ort-f32cache": "ropeconf.adapters.onnx_ops:OrtRotaryF32Cache",
    "ort-contrib": "ropeconf.adapters.onnx_ops:OrtContribRotary",
    "ort-contrib-f32cache": "ropeconf.adapters.onnx_ops:OrtContribRotaryF32Cache",
    "torch-onnx": "ropeconf.adapters.onnx_ops:TorchOnnxRotary",
    "torch-onnx-f32cache": "ropeconf.adapters.onnx_ops:TorchOnnxRotaryF32Cache",
    # torchtune (adapters/torchtune.py)
    "torchtune": "ropeconf.adapters.torchtune:TorchtuneRoPE",
    "torchtune-llama3": "ropeconf.adapters.torchtune:TorchtuneLlama3",
    # GPU-only kernels (adapters/gpu_kernels.py): unavailable, with the reason, without a CUDA GPU
    "flash-attn": "ropeconf.adapters.gpu_kernels:FlashAttnRotary",
    "flash-attn-f32cache": "ropeconf.adapters.gpu_kernels:FlashAttnRotaryF32Cache",
    "flash-attn-varlen": "ropeconf.adapters.gpu_kernels:FlashAttnRotaryVarlen",
    "flash-attn-inplace": "ropeconf.adapters.gpu_kernels:FlashAttnRotaryInplace",
    "liger": "ropeconf.adapters.gpu_kernels:LigerRotary",
    "liger-f32cache": "ropeconf.adapters.gpu_kernels:LigerRotaryF32Cache",
    "vllm-native": "ropeconf.adapters.gpu_kernels:VllmRotaryNative",
    "vllm-cuda": "ropeconf.adapters.gpu_kernels:VllmRotaryCuda",
    "vllm-native-deepseek-yarn": "ropeconf.adapters.gpu_kernels:VllmDeepseekYarnNative",
    "vllm-cuda-deepseek-yarn": "ropeconf.adapters.gpu_kernels:VllmDeepseekYarnCuda",
    "te": "ropeconf.adapters.gpu_kernels:TransformerEngineRotary",
    "te-f32cache": "ropeconf.adapters.gpu_kernels:TransformerEngineRotaryF32Cache",
    "te-bshd": "ropeconf.adapters.gpu_kernels:TransformerEngineRotaryBSHD",
    "te-thd": "ropeconf.adapters.gpu_kernels:TransformerEngineRotaryTHD",
}
