"""What a person reads of a run: terminal tables (report.py), runs side by side (compare.py), the HTML
page (html_report.py) and its plots (plots.py), and text made safe for a terminal (terminal.py). A view
reads the run directory and nothing else: it never loads a model or the orchestrator.

Layer 2: imports config/ and run/ only (tests/test_module_shape.py).
"""
