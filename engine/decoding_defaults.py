"""The decoding defaults: one place, read by `SamplingControls`, the CLI and the app.

Chosen on the continuation benchmark (`musebridge continuations`, docs/MODEL_CARD.md),
not guessed. Plain numbers with no imports, so `musebridge --help` shows them without
loading numpy.
"""

DECODING_DEFAULTS: dict[str, float] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 0.95,
    "min_p": 0.0,
    "follow_key": 0.0,
    "follow_groove": 0.0,
    "follow_texture": 0.0,
}
