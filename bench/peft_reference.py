"""The transformers + peft reference fine-tune the LM benches compare the proxy's trainer with (one helper for
``bench/lm_proxy_bench.py`` and ``bench/gpu_check.py``).

One fine-tune of one coalition, in PyTorch, the same recipe as :class:`shed_jax.lm.finetune.SlotTrainer`: the LoRA
adapter reset to its initial values, AdamW (the recipe's rate and weight decay), the coalition's minibatches from
:func:`shed_jax.lm.finetune.minibatch_schedule` seeded by :func:`~shed_jax.lm.finetune.coalition_rng`, each batch
padded to its longest row, the loss the token mean over the table's own (already shifted) targets where their weight
is non-zero, the gradient clipped to ``recipe.max_grad_norm``. Gradient checkpointing when the recipe recomputes.
"""
from __future__ import annotations

import numpy as np


def peft_fine_tuner(base, table, recipe, *, rank: int, alpha: float, targets, device: str = "cpu"):
    """``(fine_tune, model)``: ``base`` (a transformers causal LM on ``device``) wrapped by peft LoRA (``rank``,
    ``alpha``, ``targets``, no dropout), and ``fine_tune(members, seed=0, n_steps=None)`` that fine-tunes the
    coalition ``members`` (rows of ``table``, a :class:`shed_jax.lm.prompts.TokenTable`) from the initial adapter
    for ``recipe.steps`` steps (or the first ``n_steps``, e.g. to warm up). Raises ImportError without peft/torch."""
    import peft
    import torch

    from shed_jax.lm import finetune

    config = peft.LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets))
    model = peft.get_peft_model(base, config)
    if recipe.remat and recipe.remat != "none":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    ids_all = torch.from_numpy(table.ids.astype(np.int64))
    labels_all = torch.from_numpy(np.where(table.target_weights > 0, table.targets, -100).astype(np.int64))
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.train()

    def fine_tune(members, seed: int = 0, n_steps: int | None = None) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in initial:
                    p.copy_(initial[name])
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
        schedule = finetune.minibatch_schedule(members, steps=recipe.steps, batch_size=recipe.batch_size,
                                               rng=finetune.coalition_rng(members, seed))
        for rows in schedule[:n_steps]:
            width = int(table.lengths[rows].max())
            index = torch.from_numpy(rows.astype(np.int64))
            ids = ids_all[index, :width].to(device)
            labels = labels_all[index, :width].to(device)
            mask = torch.from_numpy(np.arange(width)[None, :] < table.lengths[rows][:, None]).to(device)
            logits = model(input_ids=ids, attention_mask=mask.long()).logits
            # the table's targets are already shifted: the token-mean loss on them directly
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     labels.reshape(-1), ignore_index=-100)
            loss.backward()
            if recipe.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return fine_tune, model
