import json

import pytest

from musebridge.engine.music.families import FAMILIES, family_for_program, fold_into_range, get_family
from musebridge.engine.music.vocab import NOTE, VocabConfig, Vocabulary
from musebridge.errors import VocabError


def test_every_family_pitch_pair_in_range_and_only_those(vocab):
    for fi, f in enumerate(vocab.families):
        mask = (vocab.kind == NOTE) & (vocab.family == fi)
        pitches = set(vocab.pitch[mask].tolist())
        assert pitches == set(range(f.low, f.high + 1))
    with pytest.raises(ValueError):
        vocab.note(0, 20, 1)  # below the piano


def test_note_ids_decode_to_their_meaning(vocab):
    for fi, f in enumerate(vocab.families):
        for p in (f.low, (f.low + f.high) // 2, f.high):
            for b in range(0, vocab.config.velocity_bins + 1):
                t = vocab.note(fi, p, b)
                assert (vocab.family[t], vocab.pitch[t], vocab.vbin[t]) == (fi, p, b)
                assert vocab.names[t] == f"{f.name}:{p}:" + ("off" if b == 0 else f"v{b}")


def test_velocity_bins_cover_1_to_127(vocab):
    bins = [vocab.velocity_bin(v) for v in range(1, 128)]
    assert bins[0] == 1 and bins[-1] == vocab.config.velocity_bins
    assert all(b2 - b1 in (0, 1) for b1, b2 in zip(bins, bins[1:]))
    for b in range(1, vocab.config.velocity_bins + 1):
        assert vocab.velocity_bin(vocab.bin_velocity(b)) == b


def test_json_round_trip_and_styles_last(tmp_path):
    v = Vocabulary(VocabConfig(styles=("bach", "pop")))
    v.save(tmp_path / "vocab.json")
    w = Vocabulary.load(tmp_path / "vocab.json")
    assert w == v and w.config == v.config
    base = Vocabulary()
    assert v.names[: base.style_base + 1] == base.names[: base.style_base + 1]
    assert w.style("bach") != w.style("pop") and w.style("jazz") == w.style(None)


def test_bad_vocab_files_get_clear_errors(tmp_path):
    p = tmp_path / "vocab.json"
    p.write_text("{not json")
    with pytest.raises(VocabError, match="unreadable"):
        Vocabulary.load(p)
    d = Vocabulary().to_dict()
    d["version"] = 99
    p.write_text(json.dumps(d))
    with pytest.raises(VocabError, match="version 99"):
        Vocabulary.load(p)
    d = Vocabulary().to_dict()
    d["tokens"][5] = "edited"
    p.write_text(json.dumps(d))
    with pytest.raises(VocabError, match="corrupt"):
        Vocabulary.load(p)
    with pytest.raises(VocabError, match="not found"):
        Vocabulary.load(tmp_path / "missing.json")
    with pytest.raises(VocabError, match="ticks_per_beat"):
        VocabConfig(ticks_per_beat=0)


def test_coarse_grid_and_seconds_mode_sizes():
    four = Vocabulary(VocabConfig(ticks_per_beat=4))
    twelve = Vocabulary()
    assert len(twelve) - len(four) == 4 * (12 - 4)  # only the wait tokens differ
    sec = Vocabulary(VocabConfig(time_mode="seconds"))
    assert sec.config.max_wait_ticks == 100
    onesh = Vocabulary(VocabConfig(drum_note_offs=False))
    drums = get_family("drums")
    assert len(twelve) - len(onesh) == drums.size


def test_families_from_gm_programs():
    assert family_for_program(0).name == "piano"
    assert family_for_program(33).name == "bass"
    assert family_for_program(48).name == "ensemble"
    assert family_for_program(52).name == "ensemble"  # choir aahs
    assert family_for_program(0, channel=9).name == "drums"
    assert {family_for_program(p).name for p in range(128)} <= {f.name for f in FAMILIES}
    assert 12 <= len(FAMILIES) <= 14
    assert fold_into_range(20, get_family("piano")) == 32
    assert fold_into_range(100, get_family("bass")) == 64
    assert fold_into_range(10, get_family("drums")) is None
    with pytest.raises(ValueError, match="unknown instrument family"):
        get_family("kazoo")
