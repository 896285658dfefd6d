"""RopeSpec validation, serialisation round trips and Hugging Face config loading.

* Bad input raises ValueError/TypeError whose message names the offending
  parameter (asserted on the message text).
* to_dict / from_dict / to_json round-trip every spec the strategies draw.
* Literal config.json dicts of real models load in both transformers
  generations (v4 ``rope_scaling`` + top-level keys, v5 ``rope_parameters``,
  also nested per layer type) into the spec the published config describes;
  their frequencies are then checked against the oracle.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given

from oracle import ctx, mpf, oracle_inv_freq
from ropeconf.reference import RopeSpec, apply, cos_sin, inv_freq
from test_reference_accuracy import examples, rope_specs

NAN, INF = float("nan"), float("inf")


def raises_naming(exc, *names, match_all=True):
    """pytest.raises(exc) that also checks every name appears in the message."""

    class _Ctx:
        def __enter__(self):
            self._r = pytest.raises(exc)
            self.info = self._r.__enter__()
            return self.info

        def __exit__(self, *a):
            handled = self._r.__exit__(*a)
            msg = str(self.info.value)
            found = [n for n in names if n in msg]
            assert (len(found) == len(names)) if match_all else found, f"{names} not named in: {msg!r}"
            return handled

    return _Ctx()


YARN = dict(head_dim=64, rope_type="yarn", factor=4.0, original_max_position_embeddings=4096)
LONGROPE = dict(head_dim=8, rope_type="longrope", factor=4.0, original_max_position_embeddings=4096,
                short_factor=[1.0, 1.0, 1.0, 1.0], long_factor=[1.0, 2.0, 3.0, 4.0])
LLAMA3 = dict(head_dim=64, rope_type="llama3", factor=8.0, original_max_position_embeddings=8192,
              low_freq_factor=1.0, high_freq_factor=4.0)
DYNAMIC = dict(head_dim=64, rope_type="dynamic", factor=2.0, original_max_position_embeddings=2048)


# =============================================================================== bad input
@pytest.mark.parametrize("kw,names", [
    (dict(head_dim=8, rotary_dim=5), ["rotary_dim"]),
    (dict(head_dim=8, rotary_dim=7), ["rotary_dim"]),
    (dict(head_dim=6, partial_rotary_factor=0.5), ["rotary_dim", "partial_rotary_factor"]),  # derived 3
    (dict(head_dim=8, rotary_dim=10), ["rotary_dim", "head_dim"]),
    (dict(head_dim=8, rotary_dim=0), ["rotary_dim"]),
    (dict(head_dim=1), ["head_dim"]),
    (dict(head_dim=64, partial_rotary_factor=0.0), ["partial_rotary_factor"]),
    (dict(head_dim=64, partial_rotary_factor=1.5), ["partial_rotary_factor"]),
    (dict(head_dim=64, rotary_dim=16, partial_rotary_factor=0.5), ["rotary_dim", "partial_rotary_factor"]),
])
def test_bad_geometry(kw, names):
    with raises_naming((ValueError, TypeError), *names):
        RopeSpec(**kw)


@pytest.mark.parametrize("theta", [1.0, 0.999, 0.0, -10000.0])
def test_theta_must_exceed_one(theta):
    with raises_naming(ValueError, "rope_theta"):
        RopeSpec(rope_theta=theta)


@pytest.mark.parametrize("base", [dict(rope_type="linear"), dict(rope_type="ntk"), DYNAMIC, YARN, LLAMA3, LONGROPE])
@pytest.mark.parametrize("factor", [0.0, -1.0, -1e-300])
def test_factor_must_be_positive(base, factor):
    with raises_naming(ValueError, "factor"):
        RopeSpec(**{**base, "factor": factor})


@pytest.mark.parametrize("t", ["linear", "ntk", "dynamic", "yarn", "llama3"])
def test_factor_required(t):
    kw = {"rope_type": t, "original_max_position_embeddings": 4096} if t in ("dynamic", "yarn", "llama3") \
        else {"rope_type": t}
    with raises_naming(ValueError, "factor"):
        RopeSpec(**kw)


@pytest.mark.parametrize("t,extra", [("ntk", {}), ("dynamic", {"original_max_position_embeddings": 64})])
@pytest.mark.parametrize("head_dim,axes", [(2, 0), (4, 2), (6, 3)])
def test_ntk_exponent_needs_more_than_one_frequency_per_axis(t, extra, head_dim, axes):
    """b' = b s^(d/(d-2)) is undefined for a per-axis width d = 2."""
    with raises_naming(ValueError, "rotary_dim"):
        RopeSpec(head_dim=head_dim, axial_axes=axes, rope_type=t, factor=2.0, **extra)


@pytest.mark.parametrize("key,length", [("short_factor", 3), ("short_factor", 5), ("long_factor", 0),
                                        ("long_factor", 8), ("short_factor", None), ("long_factor", None)])
def test_longrope_factor_lists_wrong_length(key, length):
    kw = dict(LONGROPE)
    kw[key] = None if length is None else [1.0] * length
    with raises_naming(ValueError, key):
        RopeSpec(**kw)


def test_longrope_factor_lists_follow_partial_rotary():
    """Lists have rotary_dim/2 entries (partial rotary), not head_dim/2."""
    ok = dict(LONGROPE, head_dim=16, partial_rotary_factor=0.5)
    RopeSpec(**ok)
    with raises_naming(ValueError, "short_factor"):
        RopeSpec(**{**ok, "short_factor": [1.0] * 8})


@pytest.mark.parametrize("fast,slow", [(1.0, 32.0), (0.5, 0.6)])
def test_beta_fast_below_beta_slow(fast, slow):
    with raises_naming(ValueError, "beta_fast", "beta_slow"):
        RopeSpec(**YARN, beta_fast=fast, beta_slow=slow)


@pytest.mark.parametrize("sec,interleaved,name", [
    ((16, 24, 23), False, "mrope_section"), ((16, 24, 25), False, "mrope_section"), ((), False, "mrope_section"),
    ((32, 32, 1), True, "mrope_section"), ((64,), True, "mrope_interleaved"),  # 3 sections needed
])
def test_mrope_sections_must_sum_to_half_rotary(sec, interleaved, name):
    with raises_naming(ValueError, name):
        RopeSpec(head_dim=128, mrope_section=sec, mrope_interleaved=interleaved)


def test_mrope_section_negative_or_float():
    with raises_naming((ValueError, TypeError), "mrope_section[1]"):
        RopeSpec(head_dim=8, mrope_section=(5, -1))
    with raises_naming((ValueError, TypeError), "mrope_section[0]"):
        RopeSpec(head_dim=8, mrope_section=(2.0, 2))


@pytest.mark.parametrize("kw", [DYNAMIC, LONGROPE, dict(LONGROPE, longrope_switch="position")])
@pytest.mark.parametrize("bad", [[0.5, 1.0], [3.0, 1e6 + 0.25]])
def test_non_integer_positions_rejected_for_dynamic_and_longrope(kw, bad):
    spec = RopeSpec(**kw)
    pos = np.array(bad)
    with raises_naming(ValueError, "positions"):
        cos_sin(spec, pos)
    with raises_naming(ValueError, "positions"):
        apply(spec, np.ones((2, spec.head_dim)), pos)
    # integral floats are positions like any other
    c, _ = cos_sin(spec, np.array([3.0, 7.0]))
    assert np.array_equal(c, cos_sin(spec, np.array([3, 7]))[0])


@pytest.mark.parametrize("bad", [[NAN], [INF], [0.0, -INF]])
def test_non_finite_positions_rejected(bad):
    with raises_naming(ValueError, "positions"):
        cos_sin(RopeSpec(), np.array(bad))


@pytest.mark.parametrize("seq_len", [0, -3, 2.5, True])
def test_bad_seq_len(seq_len):
    with raises_naming(ValueError, "seq_len"):
        inv_freq(RopeSpec(**DYNAMIC), seq_len)


def test_unknown_keys_are_named():
    with raises_naming(ValueError, "rope_thetta"):
        RopeSpec.from_dict({"head_dim": 64, "rope_thetta": 10000.0})
    with raises_naming(ValueError, "bogus", "zzz_other"):
        RopeSpec.from_dict({"head_dim": 64, "bogus": 1, "zzz_other": 2})
    with raises_naming(TypeError, "scaling_factor"):
        RopeSpec(head_dim=64, scaling_factor=2.0)


@pytest.mark.parametrize("key,value", [("factor", 2.0), ("beta_fast", 16.0), ("short_factor", [1.0]),
                                       ("low_freq_factor", 2.0), ("original_max_position_embeddings", 4096),
                                       ("attention_factor", 1.5), ("truncate", False)])
def test_scaling_key_for_another_rope_type_is_named(key, value):
    """A scaling key the chosen rope_type does not read is an error (a typo'd config must
    not silently compute plain RoPE)."""
    with raises_naming(ValueError, key):
        RopeSpec(head_dim=8, **{key: value})


# --- NaN / inf in every float field --------------------------------------------------------
USED = {  # a spec in which the field is read
    "partial_rotary_factor": {},
    "rope_theta": {},
    "max_freq": dict(freqs_for="pixel"),
    "factor": dict(rope_type="linear", factor=2.0),
    "attention_factor": YARN,
    "beta_fast": YARN,
    "beta_slow": YARN,
    "mscale": YARN,
    "mscale_all_dim": YARN,
    "low_freq_factor": LLAMA3,
    "high_freq_factor": LLAMA3,
    "xpos_scale_base": dict(xpos=True),
    "xpos_center": dict(xpos=True),
}
LIST_FIELDS = {
    "inv_freq": dict(head_dim=8, freqs_for="custom", inv_freq=[1.0, 0.5, 0.25, 0.125]),
    "short_factor": LONGROPE,
    "long_factor": LONGROPE,
}
INT_FIELDS = {
    "head_dim": {}, "rotary_dim": {}, "num_freqs": {}, "axial_axes": {},
    "original_max_position_embeddings": DYNAMIC, "max_position_embeddings": YARN,
}


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", sorted(USED))
def test_non_finite_float_field_is_named(field, bad):
    with raises_naming((ValueError, TypeError), field):
        RopeSpec(**{**USED[field], field: bad})


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", sorted(USED))
def test_non_finite_float_field_rejected_even_where_unused(field, bad):
    """In a plain default spec (where most of these fields are not read) NaN/inf is still an
    error naming the field: it would otherwise be serialised into to_json as NaN."""
    with raises_naming((ValueError, TypeError), field):
        RopeSpec(head_dim=8, **{field: bad})
    with raises_naming((ValueError, TypeError), field):
        RopeSpec.from_dict({"head_dim": 8, field: bad})


@pytest.mark.parametrize("bad", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", sorted(LIST_FIELDS))
@pytest.mark.parametrize("index", [0, 3])
def test_non_finite_list_entry_is_named(field, index, bad):
    kw = dict(LIST_FIELDS[field])
    values = list(kw[field])
    values[index] = bad
    kw[field] = values
    with raises_naming((ValueError, TypeError), f"{field}[{index}]"):
        RopeSpec(**kw)


@pytest.mark.parametrize("bad", [NAN, INF, 2.5], ids=["nan", "inf", "2.5"])
@pytest.mark.parametrize("field", sorted(INT_FIELDS))
def test_int_field_rejects_non_int(field, bad):
    with raises_naming((ValueError, TypeError), field):
        RopeSpec(**{**INT_FIELDS[field], field: bad})


@pytest.mark.parametrize("layout", ["HALF", "neox", "", "rotate_half", None, 0])
def test_wrong_layout(layout):
    with raises_naming((ValueError, TypeError), "layout"):
        RopeSpec(layout=layout)


@pytest.mark.parametrize("field,value", [("rope_type", "su"), ("rope_type", "mrope"), ("rope_type", "Llama3"),
                                         ("freqs_for", "language"), ("longrope_switch", "max")])
def test_wrong_enum_strings(field, value):
    with raises_naming(ValueError, field):
        RopeSpec(**{field: value})


@pytest.mark.parametrize("field,base", [("truncate", YARN), ("xpos", {}),
                                        ("mrope_interleaved", dict(head_dim=6, mrope_section=(1, 1, 1)))])
@pytest.mark.parametrize("value", [1, 0, "yes", "false", None, np.float64(1.0)])
def test_non_bool_flags(field, base, value):
    with raises_naming(TypeError, field):
        RopeSpec(**{**base, field: value})


def test_bool_is_not_a_number():
    with raises_naming(TypeError, "rope_theta"):
        RopeSpec(rope_theta=True)
    with raises_naming(TypeError, "head_dim"):
        RopeSpec(head_dim=True)


def test_xpos_keys_need_xpos():
    with raises_naming(ValueError, "xpos_center"):
        RopeSpec(xpos_center=3.0)
    with raises_naming(ValueError, "xpos_scale_base"):
        RopeSpec(xpos_scale_base=256.0)


def test_longrope_l0_one_is_rejected_up_front():
    with raises_naming(ValueError, "original_max_position_embeddings"):
        spec = RopeSpec(**{**LONGROPE, "original_max_position_embeddings": 1})
        inv_freq(spec, 1)


# =============================================================================== round trips
def _strict_json(text):
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(text, parse_constant=bad)


@examples(300)
@given(rope_specs(max_pairs=24))
def test_round_trip_to_dict_from_dict_to_json(spec):
    d = spec.to_dict()
    assert {"head_dim", "rotary_dim", "rope_type", "layout"} <= set(d)
    again = RopeSpec.from_dict(d)
    assert again.to_dict() == d
    j = spec.to_json()
    assert RopeSpec.from_dict(_strict_json(j)).to_dict() == d
    assert RopeSpec.from_dict(_strict_json(j)).to_json() == j
    # every field survives
    assert again == spec
    assert RopeSpec.from_dict(_strict_json(j)) == spec


def test_round_trip_keeps_partial_rotary_factor():
    spec = RopeSpec(head_dim=64, partial_rotary_factor=0.5)
    assert RopeSpec.from_dict(spec.to_dict()) == spec


def test_dict_input_equals_spec_input():
    d = {"head_dim": 32, "rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024}
    pos = np.array([0, 5, 70000])
    assert np.array_equal(cos_sin(d, pos)[0], cos_sin(RopeSpec.from_dict(d), pos)[0])


# =============================================================================== HF configs
# Literal (abridged: non-RoPE keys kept where they could confuse a loader) config.json files.
LLAMA31_8B_V4 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0", "use_cache": True, "vocab_size": 128256,
}
LLAMA31_8B_V5 = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "head_dim": 128, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rope_parameters": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                        "original_max_position_embeddings": 8192, "rope_theta": 500000.0, "rope_type": "llama3"},
    "transformers_version": "5.0.0", "vocab_size": 128256,
}

# Phi-3 128k LongRoPE lists as published (48 = 96/2 per list; "su" is the original type name).
PHI3_LONG = [
    1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0799999237060547, 1.2299998998641968,
    1.2299998998641968, 1.2999999523162842, 1.4499999284744263, 1.5999999046325684, 1.6499998569488525,
    1.8999998569488525, 2.859999895095825, 3.68999981880188, 5.419999599456787, 5.489999771118164,
    5.489999771118164, 9.09000015258789, 11.579999923706055, 15.65999984741211, 15.769999504089355,
    15.789999961853027, 18.360000610351562, 21.989999771118164, 23.079999923706055, 30.009998321533203,
    32.35000228881836, 32.590003967285156, 35.56000518798828, 39.95000457763672, 53.840003967285156,
    56.20000457763672, 57.95000457763672, 59.29000473022461, 59.77000427246094, 59.920005798339844,
    61.190006256103516, 61.96000671386719, 62.50000762939453, 63.3700065612793, 63.48000717163086,
    63.48000717163086, 63.66000747680664, 63.850006103515625, 64.08000946044922, 64.760009765625,
    64.80001068115234, 64.81001281738281, 64.81001281738281,
]
PHI3_SHORT = [
    1.05, 1.05, 1.05, 1.1, 1.1, 1.1, 1.2500000000000002, 1.2500000000000002, 1.4000000000000004,
    1.4500000000000004, 1.5500000000000005, 1.8500000000000008, 1.9000000000000008, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.1000000000000005, 2.1000000000000005,
    2.2, 2.3499999999999996, 2.3499999999999996, 2.3499999999999996, 2.3499999999999996,
    2.3999999999999995, 2.3999999999999995, 2.6499999999999986, 2.6999999999999984, 2.8999999999999977,
    2.9499999999999975, 3.049999999999997, 3.049999999999997, 3.049999999999997,
]
PHI3_MINI_128K_V4 = {
    "_name_or_path": "Phi-3-mini-128k-instruct", "architectures": ["Phi3ForCausalLM"],
    "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000,
    "hidden_act": "silu", "hidden_size": 3072, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "model_type": "phi3", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 32, "original_max_position_embeddings": 4096,
    "pad_token_id": 32000, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05,
    "rope_scaling": {"long_factor": PHI3_LONG, "short_factor": PHI3_SHORT, "type": "su"},
    "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.40.2", "use_cache": True, "vocab_size": 32064,
}
PHI3_MINI_128K_V4_LONGROPE = {**PHI3_MINI_128K_V4,
                              "rope_scaling": {"long_factor": PHI3_LONG, "short_factor": PHI3_SHORT,
                                               "type": "longrope"}}

QWEN2_VL_7B_V4 = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
    "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2_vl", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
QWEN3_VL_8B_V4 = {
    "architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl",
    "text_config": {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_text", "num_attention_heads": 32, "num_hidden_layers": 36,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000, "use_cache": True, "vocab_size": 151936,
    },
    "tie_word_embeddings": False, "transformers_version": "4.57.0.dev0", "video_token_id": 151656,
    "vision_config": {"deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_size": 1152,
                      "num_heads": 16, "out_hidden_size": 4096, "patch_size": 16},
    "vision_end_token_id": 151653, "vision_start_token_id": 151652,
}
DEEPSEEK_V3_V4 = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
    "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}
GPT_OSS_20B_V4 = {
    "architectures": ["GptOssForCausalLM"], "attention_bias": True, "attention_dropout": 0.0,
    "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2880, "initial_context_length": 4096, "initializer_range": 0.02,
    "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 64,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
    "output_router_logits": False, "pad_token_id": 199999, "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128, "swiglu_limit": 7.0,
    "tie_word_embeddings": False, "transformers_version": "4.55.0.dev0", "use_cache": True,
    "vocab_size": 201088,
}
PHI2_V4 = {  # partial rotary: head_dim 80, partial_rotary_factor 0.4 -> rotary_dim 32
    "architectures": ["PhiForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 50256,
    "embd_pdrop": 0.0, "eos_token_id": 50256, "hidden_act": "gelu_new", "hidden_size": 2560,
    "initializer_range": 0.02, "intermediate_size": 10240, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048, "model_type": "phi", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 32, "partial_rotary_factor": 0.4, "qk_layernorm": False, "resid_pdrop": 0.1,
    "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
    "transformers_version": "4.37.0", "use_cache": True, "vocab_size": 51200,
}
GEMMA3_4B_V5 = {  # transformers v5: rope_parameters nested per layer type
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "text_config": {
        "attention_bias": False, "final_logit_softcapping": None, "head_dim": 256, "hidden_size": 2560,
        "intermediate_size": 10240, "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        "max_position_embeddings": 131072, "model_type": "gemma3_text", "num_attention_heads": 8,
        "num_hidden_layers": 34, "num_key_value_heads": 4, "query_pre_attn_scalar": 256,
        "rope_parameters": {
            "full_attention": {"factor": 8.0, "rope_theta": 1000000.0, "rope_type": "linear"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
        "sliding_window": 1024, "vocab_size": 262208,
    },
    "transformers_version": "5.0.0",
}


def to_v5(cfg: dict) -> dict:
    """transformers v5 ``standardize_rope_params`` applied to a v4 config: one ``rope_parameters``
    dict with rope_type (from the legacy "type"), rope_theta, partial_rotary_factor, and for
    llama3/yarn/longrope original_max_position_embeddings (top-level wins, else max_position_embeddings)."""
    out = {k: v for k, v in cfg.items()
           if k not in ("rope_scaling", "rope_theta", "partial_rotary_factor", "original_max_position_embeddings")}
    if "text_config" in cfg:
        out["text_config"] = to_v5(cfg["text_config"])
        return out
    rp = dict(cfg.get("rope_scaling") or {})
    rp["rope_type"] = rp.pop("rope_type", None) or rp.pop("type", None) or "default"
    rp.pop("type", None)
    rp["rope_theta"] = cfg.get("rope_theta", 10000.0)
    if "partial_rotary_factor" in cfg:
        rp["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    if rp["rope_type"] in ("llama3", "yarn", "longrope", "su", "phi3") and "original_max_position_embeddings" not in rp:
        rp["original_max_position_embeddings"] = cfg.get("original_max_position_embeddings",
                                                         cfg.get("max_position_embeddings"))
    out["rope_parameters"] = rp
    return out


# name -> (config, the RopeSpec fields that config.json describes)
HF_CASES = {
    "llama-3.1-8b": (LLAMA31_8B_V4, dict(head_dim=128, rotary_dim=128, rope_type="llama3", rope_theta=500000.0,
                                         factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=8192, layout="half")),
    "phi-3-mini-128k-su": (PHI3_MINI_128K_V4, dict(head_dim=96, rotary_dim=96, rope_type="longrope",
                                                   rope_theta=10000.0, original_max_position_embeddings=4096,
                                                   max_position_embeddings=131072, factor=None,
                                                   short_factor=tuple(PHI3_SHORT), long_factor=tuple(PHI3_LONG))),
    "phi-3-mini-128k-longrope": (PHI3_MINI_128K_V4_LONGROPE, dict(head_dim=96, rope_type="longrope",
                                                                  original_max_position_embeddings=4096,
                                                                  max_position_embeddings=131072)),
    "qwen2-vl-7b": (QWEN2_VL_7B_V4, dict(head_dim=128, rotary_dim=128, rope_type="default", rope_theta=1e6,
                                         mrope_section=(16, 24, 24), mrope_interleaved=False)),
    "qwen3-vl-8b": (QWEN3_VL_8B_V4, dict(head_dim=128, rotary_dim=128, rope_type="default", rope_theta=5e6,
                                         mrope_section=(24, 20, 20), mrope_interleaved=True)),
    "gpt-oss-20b": (GPT_OSS_20B_V4, dict(head_dim=64, rotary_dim=64, rope_type="yarn", rope_theta=150000.0,
                                         factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                                         original_max_position_embeddings=4096, attention_factor=None)),
    "phi-2": (PHI2_V4, dict(head_dim=80, rotary_dim=32, rope_type="default", rope_theta=10000.0)),
}


def _check_fields(spec: RopeSpec, expected: dict):
    for k, v in expected.items():
        assert getattr(spec, k) == v, f"{k}: loaded {getattr(spec, k)!r}, config says {v!r}"


@pytest.mark.parametrize("name", sorted(HF_CASES))
@pytest.mark.parametrize("generation", ["v4", "v5"])
def test_hf_config_loads(name, generation):
    cfg, expected = HF_CASES[name]
    cfg = cfg if generation == "v4" else to_v5(cfg)
    spec = RopeSpec.from_dict(cfg)
    assert spec == RopeSpec.from_hf_config(cfg)
    _check_fields(spec, expected)
    # and the loaded spec computes the published frequencies
    seq_len = 131072 if spec.rope_type == "longrope" else None
    w, att = inv_freq(spec, seq_len)
    ow, oatt = oracle_inv_freq(spec, seq_len)
    assert w.tolist() == [float(e) for e in ow] and att == float(oatt)


def test_hf_v4_and_v5_agree():
    for name, (cfg, _) in HF_CASES.items():
        assert RopeSpec.from_dict(cfg) == RopeSpec.from_dict(to_v5(cfg)), name
    assert RopeSpec.from_dict(LLAMA31_8B_V4) == RopeSpec.from_dict(LLAMA31_8B_V5)


def test_hf_published_attention_factors():
    """Values the configs imply by the published formulas (independent of the oracle)."""
    phi3 = RopeSpec.from_dict(PHI3_MINI_128K_V4)
    _, att = inv_freq(phi3, 131072)
    assert att == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)), rel=2 ** -52)  # sqrt(17/12)
    oss = RopeSpec.from_dict(GPT_OSS_20B_V4)
    assert inv_freq(oss)[1] == pytest.approx(0.1 * math.log(32.0) + 1, rel=2 ** -52)
    llama = RopeSpec.from_dict(LLAMA31_8B_V4)
    w, att = inv_freq(llama)
    assert att == 1.0 and w[0] == 1.0
    # lowest frequency: wavelength 2 pi 500000^(126/128) >> 8192 -> omega / 8
    assert w[-1] == float(mpf(500000) ** (-mpf(126) / 128) / 8)


def test_hf_qwen2_vl_mrope_streams():
    """Qwen2-VL's 16/24/24 chunking: pairs 0-15 follow t, 16-39 h, 40-63 w."""
    spec = RopeSpec.from_dict(QWEN2_VL_7B_V4)
    pos = np.array([[1000, 0, 0], [0, 1000, 0], [0, 0, 1000]])
    c, _ = cos_sin(spec, pos)
    moved = c != 1.0
    assert moved[0, :16].any() and not moved[0, 16:].any()
    assert moved[1, 16:40].any() and not moved[1, :16].any() and not moved[1, 40:].any()
    assert moved[2, 40:].any() and not moved[2, :40].any()


@pytest.mark.parametrize("layer_type,expected", [
    (None, dict(rope_type="linear", factor=8.0, rope_theta=1e6)),
    ("full_attention", dict(rope_type="linear", factor=8.0, rope_theta=1e6)),
    ("sliding_attention", dict(rope_type="default", factor=None, rope_theta=10000.0)),
])
def test_hf_v5_nested_per_layer_type(layer_type, expected):
    spec = RopeSpec.from_hf_config(GEMMA3_4B_V5, layer_type=layer_type)
    _check_fields(spec, dict(head_dim=256, rotary_dim=256, **expected))
    if layer_type is None:
        assert spec == RopeSpec.from_dict(GEMMA3_4B_V5)


def test_hf_deepseek_v3_yarn_parameters():
    """The YaRN parameters load (factor 40, mscale = mscale_all_dim = 1 -> cos/sin factor 1)."""
    spec = RopeSpec.from_dict(DEEPSEEK_V3_V4)
    _check_fields(spec, dict(rope_type="yarn", factor=40.0, mscale=1.0, mscale_all_dim=1.0, beta_fast=32.0,
                             beta_slow=1.0, original_max_position_embeddings=4096, rope_theta=10000.0))
    assert inv_freq(spec)[1] == 1.0  # get_mscale(40, 1) / get_mscale(40, 1)
    assert RopeSpec.from_dict(to_v5(DEEPSEEK_V3_V4)) == spec


@pytest.mark.parametrize("generation", ["v4", "v5"])
def test_hf_deepseek_v3_rope_width(generation):
    cfg = DEEPSEEK_V3_V4 if generation == "v4" else to_v5(DEEPSEEK_V3_V4)
    spec = RopeSpec.from_dict(cfg)
    assert spec.rotary_dim == 64


def test_hf_unknown_non_rope_keys_are_ignored_but_rope_typos_are_not():
    cfg = dict(LLAMA31_8B_V4, some_new_field=3)
    assert RopeSpec.from_dict(cfg) == RopeSpec.from_dict(LLAMA31_8B_V4)
    bad = dict(LLAMA31_8B_V4, rope_scaling={**LLAMA31_8B_V4["rope_scaling"], "rope_type": "llama4"})
    with raises_naming(ValueError, "rope_type"):
        RopeSpec.from_dict(bad)
