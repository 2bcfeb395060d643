"""`musebridge bench` on a tiny model: the JSON report's shape (never its times), the peers, the floor."""

import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from musebridge.cli.main import cli, main  # noqa: E402
from musebridge.engine.decode import bench as B  # noqa: E402
from musebridge.engine.decode.bench_peers import PEERS  # noqa: E402

METRICS = {"prefill_ms", "decode_step_ms", "append_note_ms", "first_token_ms", "sample_ms", "realtime_factor", "peak_rss_mb"}
ROW_KEYS = {"backend", "metric", "context_or_tokens", "p50", "p99", "max", "unit"}
# what each peer measures (openvino runs our graphs through CachedRuntime: every metric of ours)
PEER_METRICS = {"torch_eager": {"prefill_ms", "decode_step_ms", "peak_rss_mb"},
                "hf_transformers": {"prefill_ms", "decode_step_ms", "peak_rss_mb"},
                "hf_transformers_generate": {"decode_step_ms"},
                "openvino": METRICS,
                "ctranslate2": {"prefill_ms", "decode_step_ms", "peak_rss_mb"},
                "ctranslate2_int8": {"prefill_ms", "decode_step_ms", "peak_rss_mb"}}


def installed(peer: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in PEERS[peer])


def check_rows(rows: list[dict], metrics: set[str]) -> None:
    """Every metric once per size, each row with p50 <= p99 <= max, all positive."""
    assert {x["metric"] for x in rows} == metrics
    steps = {x["context_or_tokens"] for x in rows if x["metric"] == "decode_step_ms"}
    assert steps == {256}  # contexts past the model's 512 are left out, not faked
    assert all(set(x) == ROW_KEYS for x in rows)
    assert all(0 < x["p50"] <= x["p99"] <= x["max"] for x in rows), rows


def hide(monkeypatch, package: str) -> None:
    """Make `package` look not installed to the bench's check."""
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else find(name, *a))


@pytest.mark.xdist_group("exclusive")  # CPU-heavy: never beside the timing tests
def test_bench_writes_every_metric_per_backend_and_says_what_it_skipped(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSEBRIDGE_CACHE_DIR", str(tmp_path / "cache"))
    hide(monkeypatch, "ctranslate2")
    out = tmp_path / "bench.json"
    backends = "onnxruntime,onnxruntime_fp32,onnxruntime_int8,torch,torch_cuda_graphs,ctranslate2"
    r = CliRunner().invoke(cli, ["bench", "--model", str(tiny), "--backends", backends, "--threads", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert {"floor", "results", "skipped", "machine"} <= report.keys()
    assert report["floor"]["floor_step_ms"] > 0 and report["floor"]["copy_bandwidth_gb_s"] > 0
    for backend in ("onnxruntime", "onnxruntime_fp32", "onnxruntime_int8", "torch"):
        check_rows([x for x in report["results"] if x["backend"] == backend], METRICS)
    if not torch.cuda.is_available():
        assert report["skipped"]["torch_cuda_graphs"] == "no CUDA device"
        assert "skipped torch_cuda_graphs: no CUDA device" in r.output
    # a peer whose package is missing: one line in `skipped`, the rest of the run goes on
    assert report["skipped"]["ctranslate2"] == "not installed (ctranslate2)"
    assert [line for line in r.output.splitlines() if "ctranslate2" in line] == ["skipped ctranslate2: not installed (ctranslate2)"]
    header = next(line for line in r.output.splitlines() if line.startswith("backend")).split()
    assert header[:6] == ["backend", "metric", "n", "p50", "p99", "max"]
    assert "decode_step_ms" in r.output


@pytest.mark.xdist_group("exclusive")
def test_every_peer_gives_every_metric_row_with_p50_p99_max(tiny, tmp_path, monkeypatch):
    missing = [p for p in PEERS if not installed(p)]
    if len(missing) == len(PEERS):
        pytest.skip(f"no peer installed ({', '.join(sorted({m for p in PEERS for m in PEERS[p]}))}): pip install -e .[bench]")
    monkeypatch.setenv("MUSEBRIDGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["bench", "--model", str(tiny), "--backends", ",".join(PEERS), "--threads", "1",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["skipped"] == {p: f"not installed ({', '.join(m for m in PEERS[p] if importlib.util.find_spec(m) is None)})"
                                 for p in missing}
    for backend, metrics in PEER_METRICS.items():
        rows = [x for x in report["results"] if x["backend"] == backend]
        if installed(backend.removesuffix("_generate")):
            check_rows(rows, metrics)
        else:
            assert rows == []
    if missing:
        pytest.skip(f"peers not installed: {', '.join(missing)}")


def test_openvino_runs_our_graphs_to_the_logits_onnxruntime_gives(tiny, tmp_path, monkeypatch):
    """OpenVINO's cache is written by the bench, not the graph (`OvRuntime`): a step that missed a
    row, or wrote it to the wrong place, would move every later step's logits."""
    pytest.importorskip("openvino")
    from musebridge.engine.decode.backends import open_runtime
    from musebridge.engine.decode.bench_peers import OvRuntime

    monkeypatch.setenv("MUSEBRIDGE_CACHE_DIR", str(tmp_path / "cache"))
    ov, ort = OvRuntime.open(str(tiny), 1), open_runtime(str(tiny), "onnxruntime", threads=1, dtype="fp32")
    toks = B._prompt_tokens(ort.vocab, 340)
    calls = [lambda rt: rt.prefill(toks[:300])] + [lambda rt, t=t: rt.step([t]) for t in toks[300:330]]
    calls.append(lambda rt: rt.append(toks[330:340]))
    worst = 0.0
    for call in calls:
        a, b = call(ov), call(ort)
        worst = max(worst, float(np.abs(a - b).max() / (b.max() - b.min())))
    assert ov.position == ort.position == 340
    assert worst < 1e-4, worst


def test_floor_measures_both_bandwidths_and_uses_the_level_the_weights_live_in(tiny, monkeypatch):
    f = B.measure_floor(str(tiny))
    assert f["l3_copy_bandwidth_gb_s"] > 0 and f["dram_copy_bandwidth_gb_s"] > 0
    assert f["flops_per_step"] > 0 and f["matmul_gflop_s"] > 0
    assert f["floor_step_ms"] == pytest.approx(max(f["bandwidth_floor_ms"], f["compute_floor_ms"]), abs=1e-3)
    if f["l3_bytes"] and f["weights_bytes_per_step"] <= f["l3_bytes"]:  # the tiny model's 2.6 MB
        assert f["weights_live_in"] == "L3"
        assert f["bandwidth_floor_ms"] == f["l3_floor_ms"] and f["copy_bandwidth_gb_s"] == f["l3_copy_bandwidth_gb_s"]
    monkeypatch.setattr(B, "cache_size", lambda level: 1024)  # an L3 the weights cannot fit in
    f = B.measure_floor(str(tiny))
    assert f["weights_live_in"] == "DRAM"
    assert f["bandwidth_floor_ms"] == f["dram_floor_ms"] and f["copy_bandwidth_gb_s"] == f["dram_copy_bandwidth_gb_s"]
    lines = B.floor_lines(f)
    assert "past the L3" in lines[0] and "L3's copy bandwidth" in lines[1] and "DRAM's" in lines[1]
    # int8 weights: a quarter of the bytes, here still past the 1 kB "L3"
    assert f["int8_floor_ms"] == pytest.approx(f["weights_bytes_per_step"] / 4 / (f["dram_copy_bandwidth_gb_s"] * 1e9) * 1e3,
                                               rel=0.02) and "int8" in lines[2]


def test_cache_size_reads_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"), (2, "Unified", "512K"),
                                             (3, "Unified", "32768K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert B.cache_size(3, tmp_path) == 32 * 2**20
    assert B.cache_size(1, tmp_path) == 32 * 2**10
    assert B.cache_size(4, tmp_path) is None and B.cache_size(3, tmp_path / "none") is None


def test_unknown_bench_backend_is_one_line(capsys):
    assert main(["bench", "--backends", "onnxruntime,warp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown backend(s) warp") and len(err.splitlines()) == 1
