"""The checks made before any work: of the config alone (config_checks.py, which asks every registry)
and of the config against the loaded task (task_checks.py).

Layer 8, above phases/: imports any layer below; nothing but the entry points imports it
(tests/test_module_shape.py).
"""
