"""conf/model/qwen2_5_0_5b_shape.yaml builds Qwen2.5-0.5B's architecture: the same parameter count as the
published model (494,032,768), grouped-query attention with 2 key/value heads, a tied embedding."""

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from test_config import compose_config


def test_the_qwen_shaped_model_has_qwen2_5_0_5b_parameters():
    cfg = compose_config("model=qwen2_5_0_5b_shape").model
    config = Qwen2Config(vocab_size=cfg.model_vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
                         tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 494_032_768
    attention = model.model.layers[0].self_attn
    assert attention.k_proj.out_features == 2 * cfg.hidden_size // cfg.num_heads and attention.q_proj.bias is not None


def test_a_small_qwen2_shape_builds_and_trains_through_the_tiny_path(tmp_path):
    from rationale_loop.models.model import build_tiny_model, load_model

    cfg = compose_config("model.architecture=qwen2", "model.num_kv_heads=2", "model.tie_embeddings=true",
                         "model.model_vocab_size=1000", f"model.cache_dir={tmp_path}").model
    path = build_tiny_model(cfg, ["### User:\nAnn has 3 pens.\n\n### Rationale:\n3.\n\n### Answer:\n3"] * 10, "key")
    model = load_model(path)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == 1000
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()


def test_a_cached_model_is_published_once_and_never_replaced_under_a_reader(tmp_path):
    """Two processes of a run (two machines) may build the same tiny model at once: the one that renames its
    folder into place second keeps the first one's, which a training process may be loading, untouched."""
    from rationale_loop.models.model import save_directory

    target = tmp_path / "tiny-llama-0123"
    with save_directory(target, replace=False) as staging:
        (staging / "config.json").write_text("first")
    assert (target / "config.json").read_text() == "first"
    reader = (target / "config.json").open()  # a process loading the first copy
    with save_directory(target, replace=False) as staging:
        (staging / "config.json").write_text("second")
    assert (target / "config.json").read_text() == "first" and reader.read() == "first"
    assert [p.name for p in tmp_path.iterdir()] == [target.name], "the second staging folder is gone"
    with save_directory(target) as staging:  # a round's checkpoint: replaced, as before
        (staging / "config.json").write_text("third")
    assert (target / "config.json").read_text() == "third"
