"""The model: build the tiny one, load and save checkpoints, NEFTune and frozen embeddings (model.py), a
GGUF file turned into a plain checkpoint (gguf.py), LoRA / QLoRA adapters (adapters.py), weight averaging
across rounds (merge.py) and the chat template an export carries (chat_template.py).

Layer 3, beside data/: imports config/, run/ and views/ only (tests/test_module_shape.py).
"""
