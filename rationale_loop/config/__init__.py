"""What a run is configured with, and the ground every other layer stands on: the structured schemas
(schema.py), the tool's own errors (errors.py), where a run may write (paths.py) and the name -> object
registries (registry.py).

Layer 0: imports nothing of the package outside this folder (tests/test_module_shape.py).
"""
