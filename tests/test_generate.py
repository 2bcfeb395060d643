"""Sampling controls, grammar and generation with a small random model (no training)."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import note_leaning_model  # noqa: E402

from musebridge.engine.training.checkpoint import load_model, save_model  # noqa: E402
from musebridge.errors import ModelFileError  # noqa: E402
from musebridge.engine.music.events import Note, Piece, TimeSignature  # noqa: E402
from musebridge.engine.decode.generate import generate  # noqa: E402
from musebridge.engine.music.midi_file import read_midi, write_midi  # noqa: E402
from musebridge.engine.decode.row_decoder import RowDecoder  # noqa: E402
from musebridge.engine.decode.sampling import ControlError, Grammar, LogitShaper, SamplingControls, parse_key, parse_strengths  # noqa: E402
from musebridge.engine.decode.torch_runtime import TorchRuntime  # noqa: E402
from musebridge.engine.music.vocab import NOTE, Vocabulary  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    vocab = Vocabulary()
    return note_leaning_model(vocab), vocab


def _prompt():
    return Piece(notes=[Note(i * 0.5, 0.5, 60 + (i % 5), 90, "piano") for i in range(8)] + [Note(0, 2, 40, 90, "bass")],
                 time_signatures=[TimeSignature(0, 4, 4)])


def test_strength_zero_masks_a_family_over_1000_steps(setup):
    model, vocab = setup
    rt = TorchRuntime(model, vocab)
    controls = SamplingControls(seed=1, strengths={"piano": 0.0, "bass": 1.0})
    out = generate(rt, _prompt(), bars=64, controls=controls, max_tokens=1000)[0]
    assert len(out.tokens) >= 1000
    fams = [vocab.families[vocab.family[t]].name for t in out.tokens if vocab.kind[t] == NOTE and vocab.vbin[t] > 0]
    assert len(fams) > 100 and "piano" not in fams


def test_output_is_valid_midi_with_nothing_left_sounding(setup, tmp_path):
    model, vocab = setup
    rt = TorchRuntime(model, vocab)
    outs = generate(rt, _prompt(), bars=2, controls=SamplingControls(seed=3, temperature=1.3), variations=3)
    for i, out in enumerate(outs):
        assert out.piece.end <= 8.0 + 1e-9  # 2 bars of 4/4, never longer
        sounding = set()
        for e in out.events:
            key = (getattr(e, "family", None), getattr(e, "pitch", None))
            if type(e).__name__ == "NoteOn":
                assert key not in sounding
                sounding.add(key)
            elif type(e).__name__ == "NoteOff":
                sounding.discard(key)
        assert not sounding
        write_midi(out.piece, tmp_path / f"o{i}.mid")
        back = read_midi(tmp_path / f"o{i}.mid")
        assert len(back.notes) == len(out.piece.notes)


def test_same_seed_same_notes_and_fork_matches_single(setup):
    model, vocab = setup
    rt = TorchRuntime(model, vocab)
    a = generate(rt, _prompt(), bars=1, controls=SamplingControls(seed=42))[0]
    b = generate(rt, _prompt(), bars=1, controls=SamplingControls(seed=42))[0]
    c = generate(rt, _prompt(), bars=1, controls=SamplingControls(seed=43))[0]
    assert a.tokens == b.tokens and a.tokens != c.tokens
    many = generate(rt, _prompt(), bars=1, controls=SamplingControls(seed=42), variations=2)
    assert many[0].tokens == a.tokens  # variation i uses seed + i, forked from the same prompt


def test_without_a_seed_each_clip_records_the_seed_that_recalls_it(setup):
    model, vocab = setup
    rt = TorchRuntime(model, vocab)
    takes = generate(rt, _prompt(), bars=1, controls=SamplingControls(), variations=2)
    assert all(isinstance(t.seed, int) for t in takes) and takes[1].seed == takes[0].seed + 1
    again = generate(rt, _prompt(), bars=1, controls=SamplingControls(seed=takes[1].seed))[0]
    assert again.tokens == takes[1].tokens


def test_key_constraint(setup):
    model, vocab = setup
    rt = TorchRuntime(model, vocab)
    out = generate(rt, _prompt(), bars=4, controls=SamplingControls(seed=5, key="D major", strengths={"drums": 0}))[0]
    pcs = {n.pitch % 12 for n in out.piece.notes}
    assert pcs and pcs <= parse_key("D major")


def test_grammar_forbids_offs_of_silent_keys_and_end_while_sounding(setup):
    _, vocab = setup
    g = Grammar(vocab)
    on, off = vocab.note(0, 60, 5), vocab.note(0, 60, 0)
    assert g.mask[off] < -1e8 and g.mask[vocab.end] == 0
    g.update(on)
    assert g.mask[off] == 0 and g.mask[vocab.end] < -1e8 and g.mask[vocab.note(0, 60, 3)] < -1e8
    assert g.closing_tokens() == [off]
    g.update(off)
    assert g.mask[off] < -1e8 and g.mask[vocab.end] == 0


def test_controls_change_between_steps(setup):
    _, vocab = setup
    shaper = LogitShaper(vocab, SamplingControls(seed=0))
    logits = np.zeros(len(vocab), np.float32)
    row = RowDecoder(vocab, shaper, Grammar(vocab), shaper.rng)
    row.sample(logits)
    shaper.set_controls(SamplingControls(seed=0, strengths={f: 0.0 for f in vocab.family_index if f != "organ"}))
    picks = [row.sample(logits) for _ in range(300)]
    fams = {vocab.families[vocab.family[t]].name for t in picks if vocab.kind[t] == NOTE}
    assert fams == {"organ"}


def test_strength_one_favours_a_family(setup):
    _, vocab = setup
    logits = np.zeros(len(vocab), np.float32)
    share = {}
    for s in (0.5, 1.0):
        shaper = LogitShaper(vocab, SamplingControls(seed=0, strengths={"bass": s}))
        row = RowDecoder(vocab, shaper, Grammar(vocab), shaper.rng)
        picks = [row.sample(logits) for _ in range(2000)]
        notes = [t for t in picks if vocab.kind[t] == NOTE]
        share[s] = sum(vocab.families[vocab.family[t]].name == "bass" for t in notes) / len(notes)
    assert share[0.5] < 0.1 and share[1.0] > 0.4


@pytest.mark.parametrize("kwargs, msg", [
    (dict(temperature=0), "temperature"), (dict(top_p=1.5), "top-p"), (dict(top_k=-1), "top-k"),
    (dict(strengths={"piano": 2}), "strength"), (dict(key="H major"), "key"), (dict(density=-1), "density"),
])
def test_bad_controls_get_clear_errors(kwargs, msg):
    with pytest.raises(ControlError, match=msg):
        SamplingControls(**kwargs)


def test_parse_strengths():
    v = Vocabulary()
    assert parse_strengths("piano=1, drums=0", v) == {"piano": 1.0, "drums": 0.0}
    for bad in ("kazoo=1", "piano", "piano=loud"):
        with pytest.raises(ControlError):
            parse_strengths(bad, v)


def test_model_folder_round_trip_and_damage(setup, tmp_path):
    model, vocab = setup
    save_model(tmp_path / "m", model, vocab, {"note": "test"})
    m2, v2, info = load_model(tmp_path / "m")
    assert v2 == vocab and info == {"note": "test", "weights_sha256": info["weights_sha256"]}
    tok = torch.randint(0, len(vocab), (1, 20))
    f = torch.zeros(1, 20, 5, dtype=torch.long)
    with torch.no_grad():
        assert torch.allclose(model(tok, f), m2(tok, f))
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="checksum"):  # truncated: config.json's checksum says so
        load_model(tmp_path / "m")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nowhere")
    w.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "m")


def test_strength_one_brings_in_a_family_the_prompt_lacks():
    """With the shipped model: a piano phrase, bass at 1 -- a producer expects to hear bass."""
    from musebridge.engine.decode.backends import open_runtime
    from musebridge.engine.music.midi_file import read_midi

    rt = open_runtime(None, "onnxruntime")
    prompt = read_midi(Path(__file__).parents[1] / "docs" / "examples" / "phrase.mid")
    assert "bass" not in prompt.families
    outs = generate(rt, prompt, 4, SamplingControls(seed=1, strengths={"bass": 1.0}), variations=4)
    bass = [sum(n.family == "bass" for n in o.piece.notes) for o in outs]
    assert sum(b > 0 for b in bass) >= 3, bass


def test_from_silence_the_model_names_the_band_and_a_seed_recalls_it(setup):
    model, vocab = setup
    rt = TorchRuntime(model, vocab)
    takes = generate(rt, Piece(), bars=1, controls=SamplingControls(seed=20, strengths={"piano": 0.0}), variations=3)
    for t in takes:
        assert t.info["instruments"] and "piano" not in t.info["instruments"]
        assert t.tokens.count(vocab.end) == 0  # a clip of a set length is never ended early
        assert t.piece.tempos and t.piece.time_signatures  # silence starts at 120 BPM in 4/4
    again = generate(rt, Piece(), bars=1, controls=SamplingControls(seed=takes[2].seed, strengths={"piano": 0.0}))[0]
    assert again.tokens == takes[2].tokens and again.info["instruments"] == takes[2].info["instruments"]


@pytest.mark.parametrize("scale", [4.0, 0.2])  # a peaked distribution, and one whose nucleus is most of it
def test_top_p_samples_exactly_the_nucleus_in_proportion(scale):
    from musebridge.engine.decode.sampling import sample_logits

    rng = np.random.default_rng(0)
    x = rng.standard_normal(2000) * scale
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), 0.9)) + 1]
    want = np.zeros_like(p)
    want[keep] = p[keep] / p[keep].sum()
    got = np.bincount([sample_logits(x, 0, 0.9, rng) for _ in range(30000)], minlength=len(p)) / 30000
    assert got[want == 0].sum() == 0  # never outside the nucleus
    top = keep[:20]
    assert np.abs(got[top] - want[top]).max() < 4 * np.sqrt(want[top].max() / 30000) + 1e-3


def test_top_p_never_cuts_a_part_of_the_band_spread_thin():
    """A bass whose 100 notes share 4 % of the probability: a nucleus over all tokens cut
    it whole (one loud part and a rest hold 0.96), so the band lost its bass. Taken part by
    part it plays its 4 %, its own likeliest notes; a part outside the band is still cut."""
    from musebridge.engine.decode.sampling import sample_logits

    p = np.zeros(300)
    p[0] = 0.06  # a rest (part 0: time)
    p[100] = 0.9  # one likely note of the lead (part 1: ids 100-199)
    p[200:300] = 0.04 / 100  # the bass, spread thin (part 2)
    x = np.log(p + 1e-300)
    parts = np.array([0, 100, 200])
    n = 20000

    def bass_share(**kw):
        rng = np.random.default_rng(1)
        return np.mean([sample_logits(x, 0, 0.95, rng, **kw) >= 200 for _ in range(n)])

    assert bass_share() == 0.0  # the whole-step nucleus
    assert abs(bass_share(parts=parts, band=np.array([True, True, True])) - 0.04) < 0.006
    assert bass_share(parts=parts, band=np.array([True, False, False])) == 0.0  # not in the band: cut as before


def test_grammar_lets_a_pedal_change_state_at_most_up_then_down_per_instant():
    """A flipped pedal says nothing; pushed by biases a model once flipped one until the guard
    stopped the answer."""
    v = Vocabulary()
    g = Grammar(v)
    up, down = v.pedal(0, False), v.pedal(0, True)
    assert g.mask[up] < -1e8 and g.mask[down] == 0.0  # it starts up
    g.update(down)
    assert g.mask[up] < -1e8 and g.mask[down] < -1e8  # pressed: nothing more at this instant
    g.update(v.wait(3))
    assert g.mask[up] == 0.0 and g.mask[down] < -1e8
    g.update(up)
    assert g.mask[up] < -1e8 and g.mask[down] == 0.0  # a re-pedal: up then down at one instant
    g.update(down)
    assert g.mask[up] < -1e8 and g.mask[down] < -1e8
