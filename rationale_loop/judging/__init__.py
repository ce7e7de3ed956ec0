"""Samples judged: answer checkers (verify.py), the arithmetic steps of a rationale checked (chain/), an
answer read from free text (free_text.py), a batch sampled and judged (rollouts.py), held-out accuracy
(evaluate.py), pairs mined (mine.py) and a round's sample counts (stats.py).

Layer 5: imports config/, run/, views/, data/, models/ and generate/ only (tests/test_module_shape.py).
"""
