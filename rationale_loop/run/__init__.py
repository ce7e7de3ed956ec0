"""The run directory on disk: its record types and JSONL I/O (records.py), round paths, DONE and forks
(rundir.py), the saved config, remembered overrides and round 0's data file names (run_config.py),
opening a round and keeping its data mix only while it fits (round_start.py), the record of a round's
files (integrity.py), one process per run (lock.py) and named crash points (faults.py).

Layer 1: imports config/ only (tests/test_module_shape.py).
"""
