"""A new student of any causal-LM architecture: ``student.arch`` = gpt2, llama, qwen2 or a ``config.json``.

Every student trains through the fused sliced loss, which reads the final hidden states and the LM head's weight and
computes ``logits = hidden @ W^T`` itself. So a model whose logits are anything else (a bias on the head, a logit
scale, soft-capping) is refused before training, naming the attribute, instead of training on logits the exported
model never gives (:func:`check_plain_head`).
"""

from __future__ import annotations

import math
from pathlib import Path

from daram.errors import DaramError

ARCHS = ("gpt2", "llama", "qwen2")

# Config attributes that change the logits after ``hidden @ W^T``, with the value that leaves them unchanged.
LOGIT_TRANSFORMS = {
    "final_logit_softcapping": None,  # Gemma 2 / 3: tanh soft-capping
    "logit_scale": 1.0,  # Cohere
    "logits_scaling": 1.0,  # Granite (divides)
    "lm_head_multiplier": 1.0,  # Falcon-H1
    "output_multiplier_scale": 1.0,
}


def default_intermediate_size(arch: str, n_embd: int) -> int:
    """The MLP width when ``student.intermediate_size`` is 0: GPT-2's 4 x width; for the gated (SwiGLU) MLPs of
    llama and qwen2 the same parameter count, 8/3 x width, rounded up to a multiple of 64."""
    if arch == "gpt2":
        return 4 * n_embd
    return 64 * math.ceil(8 * n_embd / 3 / 64)


def student_shape(student) -> tuple[int, int, int]:
    """(layers, width, weights of one block) of a new student, for `daram plan`'s FLOPs: attention and MLP matrices
    (norms and biases left out). Q and the output projection are d x d, K and V d x (d / heads x KV heads); the MLP
    is two d x I matrices for gpt2 and three (gate, up, down) for the gated llama and qwen2. A config.json is read
    for its shape."""
    arch, layers, d, heads = student.arch, student.n_layer, student.n_embd, student.n_head
    kv, inner = student.n_kv_head, student.intermediate_size
    if arch not in ARCHS:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(arch)
        layers, d, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
        arch = "gpt2" if config.model_type == "gpt2" else "llama"
    kv = kv or heads
    inner = inner or default_intermediate_size(arch, d)
    attention = 2 * d * d + 2 * d * (d // heads) * kv
    return layers, d, attention + (2 if arch == "gpt2" else 3) * d * inner


def new_student(student, vocab_size: int, n_positions: int, tokenizer=None):
    """A randomly initialised causal LM of ``student``'s architecture and shape over ``vocab_size`` ids (seed torch
    first for a reproducible one), with the tokenizer's BOS, EOS and PAD ids in its config."""
    from daram.pipeline.models import gpt2

    intermediate = student.intermediate_size or default_intermediate_size(student.arch, student.n_embd)
    if student.arch == "gpt2":
        model = gpt2(vocab_size, student.n_embd, student.n_head, student.n_layer, n_positions=n_positions,
                     dropout=student.dropout, tokenizer=tokenizer, n_inner=intermediate,
                     tie_embeddings=student.tie_embeddings)
    elif student.arch in ARCHS:
        model = _rotary_student(student, vocab_size, n_positions, intermediate, tokenizer)
    else:
        model = _student_from_config(student.arch, vocab_size, n_positions, tokenizer)
    check_plain_head(model, f"student.arch {student.arch!r}")
    return model


def _rotary_student(student, vocab_size: int, n_positions: int, intermediate: int, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[student.arch]
    config = config_class(
        vocab_size=vocab_size, hidden_size=student.n_embd, num_hidden_layers=student.n_layer,
        num_attention_heads=student.n_head, num_key_value_heads=student.n_kv_head or student.n_head,
        intermediate_size=intermediate, max_position_embeddings=n_positions, attention_dropout=student.dropout,
        tie_word_embeddings=student.tie_embeddings, **special_ids(tokenizer),
    )
    return model_class(config)


def _student_from_config(path: str, vocab_size: int, n_positions: int, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    file = Path(path)
    if not file.is_file():
        raise DaramError(f"student.arch {path!r} is neither {', '.join(ARCHS)} nor a config.json file")
    try:
        config = AutoConfig.from_pretrained(str(file))
    except (OSError, ValueError, KeyError) as exc:
        raise DaramError(f"student.arch {path!r}: cannot read it as a transformers config ({exc})") from None
    if getattr(config, "vocab_size", 0) < vocab_size:
        raise DaramError(f"student.arch {path!r}: vocab_size {getattr(config, 'vocab_size', None)} < the store's {vocab_size}")
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 0)
    if positions < n_positions:
        raise DaramError(f"student.arch {path!r}: {positions} positions < the store's seq_len {n_positions}")
    for key, value in special_ids(tokenizer).items():
        setattr(config, key, value)
    try:
        return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise DaramError(f"student.arch {path!r}: not a causal LM that transformers can build ({exc})") from None


def special_ids(tokenizer) -> dict[str, int | None]:
    """The tokenizer's BOS, EOS and PAD ids for a model config (BOS and PAD fall back to EOS, as `prepare` does)."""
    if tokenizer is None:
        return {"bos_token_id": None, "eos_token_id": None}
    eos = tokenizer.eos_token_id
    return {
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
    }


def check_plain_head(model, whose: str) -> None:
    """Refuse a model whose logits are not ``final hidden @ W^T``, naming what makes them differ: a config
    attribute of :data:`LOGIT_TRANSFORMS`, a bias on the LM head, or (found by a probe) anything else."""
    import torch

    config = model.config
    for name, identity in LOGIT_TRANSFORMS.items():
        value = getattr(config, name, identity)
        if value != identity and not (identity is None and not value):
            raise DaramError(f"{whose}: {type(model).__name__} has {name} = {value}: its logits are not hidden @ W^T, "
                             "which daram's fused loss computes; use an architecture without it")
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise DaramError(f"{whose}: {type(model).__name__} has no linear LM head (get_output_embeddings)")
    if getattr(head, "bias", None) is not None:
        raise DaramError(f"{whose}: {type(model).__name__} has a bias on its LM head (lm_head.bias): its logits are "
                         "not hidden @ W^T, which daram's fused loss computes")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            probe = torch.arange(8, device=head.weight.device).unsqueeze(0) % head.weight.shape[0]
            logits = model(input_ids=probe).logits.float()
            ours = (model.base_model(input_ids=probe).last_hidden_state @ head.weight.T).float()
    finally:
        model.train(was_training)
    if not torch.allclose(ours, logits, rtol=1e-4, atol=1e-4 * float(logits.abs().max()) + 1e-5):
        raise DaramError(f"{whose}: {type(model).__name__} post-processes its logits after the LM head (they are not "
                         "hidden @ W^T, which daram's fused loss computes)")
