"""The decoding defaults: one place, read by `SamplingControls`, the CLI and the app.

Chosen on the continuation benchmark (`musebridge continuations --data data --limit 100`,
the shipped model; docs/MODEL_CARD.md has the sweep), not guessed. Following at 0.5 each
brought key agreement from 0.49 to 0.83 (the real continuation: 0.80), in-scale from 0.86
to 1.00 and drones from 6 % to 1 % of notes; at 0.7 the answers grew sparse on POP909
(density 0.5-0.75 of the real one). Temperature 0.9, 1.1 and min-p 0.05 instead of top-p
0.95 each measured worse on POP909's density and note lengths. Plain numbers with no
imports, so `musebridge --help` shows them without loading numpy.

Key at 0.7 since 2026-12-02: the key's bias now keeps each part's probability of playing
(`FollowBias.key`), so a stricter key no longer thins the answers. On 24 band test prompts
x 2 seeds at 0.5 the answers stayed 0.87 in scale, at 0.7 0.99 with the same pitched notes;
on the first 100 test prompts 0.7 kept in-scale at 1.00 (0.98 at 0.5) and drones at 0.7 %.
"""

DECODING_DEFAULTS: dict[str, float] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 0.95,
    "min_p": 0.0,
    "follow_key": 0.7,
    "follow_groove": 0.5,
    "follow_texture": 0.5,
}
