"""The data pipeline on tiny MIDI folders written by the test (and resume)."""

import json
import shutil

import numpy as np
import pytest

from conftest import write_test_midi
from musebridge.engine.data.data_build import build
from musebridge.engine.data.dataset import TokenShards
from musebridge.engine.data.sources import midi_folder_tasks, split_of, version_group
from musebridge.engine.music.tokenizer import decode_tokens
from musebridge.errors import DataError


@pytest.fixture
def midi_folder(tmp_path):
    root = tmp_path / "My Collection"
    for i in range(12):
        d = root / f"{i:03d}"
        d.mkdir(parents=True)
        write_test_midi(d / f"{i:03d}.mid")
    (root / "005" / "versions").mkdir()
    shutil.copy(root / "005" / "005.mid", root / "005" / "versions" / "005-v2.mid")
    (root / "broken.mid").write_bytes(b"MThd garbage")
    (root / "notes.txt").write_text("not midi")
    return root


def test_build_reports_bad_files_and_writes_shards(midi_folder, tmp_path):
    out = tmp_path / "data"
    seen = []
    s = build([str(midi_folder)], out, workers=2, progress=lambda d, t, r: seen.append(r))
    assert s.pieces == 13 and s.failed == 1
    assert any(r.error and "broken.mid" in r.key for r in seen)
    shards = TokenShards(out)
    man = shards.manifest
    assert {p["style"] for p in man["pieces"]} == {"my_collection"}
    assert man["failed"][0]["id"].endswith("broken.mid")
    # the version of 005 lands in the same split as 005
    splits = {p["id"]: p["split"] for p in man["pieces"]}
    assert splits["my_collection/005/versions/005-v2.mid"] == splits["my_collection/005/005.mid"]
    # each piece's tokens decode to its notes
    p = man["pieces"][0]
    toks = shards.piece_tokens(p)
    v = shards.vocab
    assert v.names[toks[0]] == "start" and v.names[toks[1]] == "style:my_collection" and v.names[toks[-1]] == "end"
    assert len(decode_tokens(toks, v).notes) == p["notes"]
    splits_stats, styles = shards.stats()
    assert sum(x.pieces for x in splits_stats.values()) == 13
    assert sum(x.tokens for x in splits_stats.values()) == sum(len(shards.tokens(sp)) for sp in splits_stats)
    w = shards.sample_windows("train", 4, 64, np.random.default_rng(0))
    assert w.shape == (4, 64) and w.max() < len(v)


def test_build_resumes_without_reparsing(midi_folder, tmp_path):
    out = tmp_path / "data"
    build([str(midi_folder)], out, workers=1, limit=5)
    first = json.loads((out / "manifest.json").read_text())
    assert len(first["pieces"]) == 5
    s = build([str(midi_folder)], out, workers=1)
    assert s.parsed_now == 14 - 5 and s.pieces == 13
    s = build([str(midi_folder)], out, workers=1)
    assert s.parsed_now == 0
    with pytest.raises(DataError, match="another token config"):
        from musebridge.engine.music.vocab import VocabConfig

        build([str(midi_folder)], out, config=VocabConfig(ticks_per_beat=4), workers=1)


def test_groove_style_index_and_official_split(tmp_path):
    root = tmp_path / "groove"
    (root / "drummer1" / "s1").mkdir(parents=True)
    write_test_midi(root / "drummer1" / "s1" / "1_funk-groove1_120_beat_4-4.mid")
    write_test_midi(root / "drummer1" / "s1" / "2_jazz-fill_120_fill_4-4.mid")
    (root / "info.csv").write_text(
        "drummer,session,id,style,bpm,beat_type,time_signature,midi_filename,audio_filename,duration,split\n"
        "drummer1,s1,1,funk/groove1,120,beat,4-4,drummer1/s1/1_funk-groove1_120_beat_4-4.mid,,1,validation\n"
        "drummer1,s1,2,jazz/fill,120,fill,4-4,drummer1/s1/2_jazz-fill_120_fill_4-4.mid,,1,test\n"
    )
    tasks = {t.key: t for t in midi_folder_tasks(root)}
    assert {(t.style, t.split) for t in tasks.values()} == {("funk", "val"), ("jazz", "test")}


def test_labels_and_groups():
    assert version_group("001/versions/001-v1.mid") == "001"
    assert version_group("a/song_v2.mid") == version_group("a/Song.mid") == "a/song"
    assert version_group("a/tune (2).mid") == "a/tune"
    assert split_of("x") == split_of("x")
    counts = {s: 0 for s in ("train", "val", "test")}
    for i in range(4000):
        counts[split_of(f"g{i}")] += 1
    assert 0.86 < counts["train"] / 4000 < 0.94 and counts["val"] > 100 and counts["test"] > 100


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        build([str(tmp_path / "nowhere")], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no pieces"):
        build([str(tmp_path / "empty")], tmp_path / "out")
    with pytest.raises(DataError, match="no manifest"):
        TokenShards(tmp_path / "empty")
