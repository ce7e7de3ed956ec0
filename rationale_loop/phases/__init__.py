"""The phases of a round, each a function of the run's context and the round number that reads the files
the earlier phases wrote and writes one output of its own (atomically, so a killed call leaves either
the whole file or none):

    sample    generations.jsonl   the pool's questions sampled and judged       (sample.py)
    mine      stats.json          pairs.jsonl and the round's counts; stats last (mine.py)
    train     checkpoint/         train.json, then the checkpoint; SFT is round 0's train phase (train.py)
    evaluate  eval.jsonl          greedy held-out accuracy of the round's checkpoint (evaluate.py)

loop.py runs them in order, each only when its output is missing (docs/run-directory.md). launch.py runs a
phase in processes under accelerate (worker.py and sample_worker.py are what those processes run).

Layer 7: imports the layers below (config/ .. training/), never preflight/ or an entry point
(tests/test_module_shape.py).
"""
