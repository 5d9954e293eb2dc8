"""Llama-family causal LMs in Flax NNX: the stacked-layer decoder, batched LoRA hooks and loaders.

``load(path_or_name)`` reads a local Hugging Face checkpoint directory (safetensors), a hub name
(through the local cache when offline) or a llama.cpp ``.gguf`` file, and returns a
:class:`LanguageModel` with ``.tokenizer``, ``.config``, ``.model`` and ``.logits(ids)``.
Batched LoRA fine-tuning (:class:`SlotTrainer`), scoring (:class:`StackScorer`) and prompt formats
(:func:`format_prompt`) are re-exported here; their modules are ``shed_jax.lm.finetune``, ``.scoring``, ``.prompts``.
"""
from shed_jax.lm.finetune import FinetuneRecipe, SlotTrainer, make_optimizer
from shed_jax.lm.gguf import find_smollm2_gguf, read_gguf
from shed_jax.lm.load import (
    LanguageModel,
    ModelNotFoundError,
    decoder_from_weights,
    load,
    read_hf_weights,
    resolve_hub_name,
)
from shed_jax.lm.model import (
    LORA_TARGETS,
    Decoder,
    DecoderConfig,
    apply_rope,
    init_lora,
    rms_norm,
    rope_cos_sin,
    rope_inv_freq,
)
from shed_jax.lm.prompts import PROMPT_FORMATS, format_prompt, multiple_choice_prompt
from shed_jax.lm.scoring import METRICS, StackScorer

__all__ = [
    "LORA_TARGETS",
    "METRICS",
    "PROMPT_FORMATS",
    "FinetuneRecipe",
    "SlotTrainer",
    "StackScorer",
    "format_prompt",
    "make_optimizer",
    "multiple_choice_prompt",
    "Decoder",
    "DecoderConfig",
    "LanguageModel",
    "ModelNotFoundError",
    "apply_rope",
    "decoder_from_weights",
    "find_smollm2_gguf",
    "init_lora",
    "load",
    "read_gguf",
    "read_hf_weights",
    "resolve_hub_name",
    "rms_norm",
    "rope_cos_sin",
    "rope_inv_freq",
]
