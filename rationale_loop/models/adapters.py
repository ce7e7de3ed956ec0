"""LoRA and QLoRA (`peft=lora|qlora`) for both training stages.

What a round's directory holds with an adapter: `checkpoint/` is always a plain model, the adapter
merged into the weights it was trained on, so the next round, vLLM, weight averaging, resume and plain
transformers load it as they load a full finetune; `adapter/` is the round's adapter itself (peft's
save_pretrained, its base recorded in adapter_config.json) for whoever wants to serve or inspect it
unmerged. A resumable training state holds only the adapter's weights (train.py saves what trains).

QLoRA loads the round's starting weights in 4 bits (bitsandbytes NF4, which needs a CUDA GPU) and trains
the adapter in bf16 on top; the adapter is then merged into the starting weights loaded in full
precision, never into the 4-bit copy, so rounds do not compound quantization error.

SPIN's reference model under an adapter needs no second copy: SPIN scores every item with the starting
weights before the first step, when the fresh adapter (B = 0) leaves the model equal to its base.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from rationale_loop.config.schema import ModelConfig, PeftConfig

log = logging.getLogger(__name__)


def uses_adapter(cfg: PeftConfig) -> bool:
    return cfg.method != "none"


def load_for_training(path: str | Path, model_cfg: ModelConfig, peft_cfg: PeftConfig) -> Any:
    """The model a stage trains, loaded from `path`: in 4 bits for QLoRA, as saved otherwise."""
    from rationale_loop.models.model import load_model

    if peft_cfg.method != "qlora":
        return load_model(path, model_cfg.dtype, model_cfg.trust_remote_code)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(str(path), quantization_config=quantization, use_safetensors=True,
                                                 trust_remote_code=model_cfg.trust_remote_code, device_map={"": 0})
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def attach(model: Any, cfg: PeftConfig, seed: int) -> Any:
    """The model with a fresh adapter on the configured modules (only the adapter trains), or the model
    itself without one. Seeded: the adapter's A matrices are drawn at random."""
    if not uses_adapter(cfg):
        return model
    from peft import LoraConfig, get_peft_model

    targets = cfg.target_modules[0] if list(cfg.target_modules) == ["all-linear"] else list(cfg.target_modules)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated is_gradient_checkpointing: a library's note to itself, not the user's
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        adapted = get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                   target_modules=targets, bias="none", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    total = sum(p.numel() for p in adapted.parameters())
    log.info("%s adapter r=%d alpha=%g on %s: %d of %d parameters train (%.2f%%)",
             cfg.method, cfg.r, cfg.alpha, targets, trainable, total, 100 * trainable / total)
    return adapted


def merge(model: Any, cfg: PeftConfig, adapter_dir: Path, start: str | Path, model_cfg: ModelConfig) -> Any:
    """Save the trained adapter to `adapter_dir` and return a plain model with it merged in."""
    if not uses_adapter(cfg):
        return model
    from rationale_loop.models.model import save_directory

    with save_directory(adapter_dir) as staging:
        model.save_pretrained(staging)
    if cfg.method == "lora":
        return model.merge_and_unload()
    from peft import PeftModel

    from rationale_loop.models.model import load_model

    base = load_model(start, model_cfg.dtype, model_cfg.trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
