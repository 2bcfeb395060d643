"""`musebridge bench` on a tiny model: the JSON report's shape (never its times)."""

import json

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from musebridge.cli.main import cli, main  # noqa: E402

METRICS = {"prefill_ms", "decode_step_ms", "append_note_ms", "first_token_ms", "sample_ms", "realtime_factor", "peak_rss_mb"}




@pytest.mark.xdist_group("exclusive")  # CPU-heavy: never beside the timing tests
def test_bench_writes_every_metric_per_backend_and_says_what_it_skipped(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSEBRIDGE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["bench", "--model", str(tiny), "--backends", "onnxruntime,torch,torch_cuda_graphs",
                                 "--threads", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert {"floor", "results", "skipped", "machine"} <= report.keys()
    assert report["floor"]["floor_step_ms"] > 0 and report["floor"]["copy_bandwidth_gb_s"] > 0
    for backend in ("onnxruntime", "torch"):
        rows = [x for x in report["results"] if x["backend"] == backend]
        assert {x["metric"] for x in rows} == METRICS
        steps = {x["context_or_tokens"] for x in rows if x["metric"] == "decode_step_ms"}
        assert steps == {256}  # contexts past the model's 512 are left out, not faked
        assert all(x["p50"] > 0 and x["p99"] >= x["p50"] for x in rows)
        assert all(set(x) == {"backend", "metric", "context_or_tokens", "p50", "p99", "unit"} for x in rows)
    if not torch.cuda.is_available():
        assert report["skipped"]["torch_cuda_graphs"] == "no CUDA device"
        assert "skipped torch_cuda_graphs: no CUDA device" in r.output
    assert "decode_step_ms" in r.output


def test_unknown_bench_backend_is_one_line(capsys):
    assert main(["bench", "--backends", "onnxruntime,warp"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown backend(s) warp") and len(err.splitlines()) == 1
