"""Training: the one loop for SFT and rounds (train.py), the objectives (how a round's data becomes items
and a batch a loss), the loss functions, the tokens a ranked group scores, per-token log-probs without
whole-batch logits, packing, the optimizers and the per-round diagnostics.

Layer 6: imports the layers below (config/ .. judging/) only (tests/test_module_shape.py).
"""
