"""Text in, text out: the tasks (tiny_arith, the public sets), the reasoning formats (render a problem,
parse a reply), the chat templates, the SFT mix read from the sources people have, its dedup and
decontamination, and tokenization with the prompt masked (encode.py).

Layer 3: imports config/, run/ and views/ only (tests/test_module_shape.py).
"""
