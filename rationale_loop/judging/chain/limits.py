"""The bounds that keep a pathological sample to milliseconds (the package's docstring says what each does)."""

MAX_CHARS = 100_000
MAX_STEPS = 256
MAX_DIGITS = 30
MAX_EXPONENT = 30
MAX_DEPTH = 16
MAX_SIDE_ATOMS = 64
MAX_BITS = 4096
