"""The TensorRT backend's pure parts, everywhere (engine/decode/trt_engines.py, trt_memory.py,
trt_runtime.io_layout): the engine cache key and folder, what a graph declares and the
optimization profile made from it, the upload layout, availability and one-line errors. The
runtime itself: tests/test_tensorrt.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")

from musebridge.engine.decode import trt_engines, trt_memory  # noqa: E402
from musebridge.engine.decode.backends import BackendError, available_backends, open_runtime  # noqa: E402
from musebridge.engine.decode.trt_engines import (  # noqa: E402
    MAX_BATCH, GraphIO, engine_cache_key, engine_path, engine_root, profile_shapes, read_graph_io)
from musebridge.engine.decode.trt_memory import tensorrt_available  # noqa: E402
from musebridge.engine.decode.trt_runtime import io_layout  # noqa: E402
from musebridge.onnx_export import GraphConfig, GraphFileError, build_graph, cache_root  # noqa: E402
from musebridge.onnx_export.build import expected_shapes  # noqa: E402

from conftest import one_line as _one_line  # noqa: E402

ON_GPU = tensorrt_available()


@pytest.fixture(scope="module", autouse=True)
def _own_cache(cache_dir):
    """Built graphs go to a temporary cache (conftest's `cache_dir`)."""
    return cache_dir


# --- graphs without torch: random weights straight into build_graph ---------------------------------------
CFG = GraphConfig(vocab_size=40, n_layer=2, n_head=4, d_model=32, context=64, window=8, local_heads=2, mlp_ratio=2,
                  ticks_per_beat=12, rope_base=10000.0)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """{(kind, compute): path} of a tiny random decoder's graphs."""
    import onnx

    rng = np.random.default_rng(0)
    weights = {k: (rng.standard_normal(s) * 0.1).astype(np.float16) for k, s in expected_shapes(CFG).items()}
    folder = tmp_path_factory.mktemp("graphs")
    out = {}
    for kind in ("step", "chunk"):
        for compute in ("fp32", "fp16"):
            path = out[kind, compute] = folder / f"{kind}-{compute}.onnx"
            onnx.save_model(build_graph(CFG, weights, kind, compute), str(path))
    return out


# --- the engine cache ------------------------------------------------------------------------------------
def test_cache_key_follows_the_graph_gpu_and_tensorrt(tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph bytes" * 1000)
    base = ("NVIDIA H200", "9.0", "10.9.0")
    key = engine_cache_key(graph, *base)
    assert key == engine_cache_key(graph, *base) and len(key) == 64 and int(key, 16) >= 0  # stable sha256 hex
    assert key == engine_cache_key(str(graph), *base)
    others = {
        engine_cache_key(graph, "NVIDIA L4", "9.0", "10.9.0"),
        engine_cache_key(graph, "NVIDIA H200", "8.9", "10.9.0"),
        engine_cache_key(graph, "NVIDIA H200", "9.0", "10.10.0"),
        engine_cache_key(graph, *base, fp16=False),
    }
    graph.write_bytes(b"graph bytes" * 999 + b"graph byteZ")
    others.add(engine_cache_key(graph, *base))
    assert len(others) == 5 and key not in others
    graph.write_bytes(b"graph bytes" * 1000)  # back to the same bytes: the same key
    assert engine_cache_key(graph, *base) == key


def test_cache_key_of_a_missing_graph_is_a_one_line_error(tmp_path):
    with pytest.raises(GraphFileError) as e:
        engine_cache_key(tmp_path / "gone.onnx", "gpu", "9.0", "10")
    assert "gone.onnx" in _one_line(e)


def test_engines_live_in_the_musebridge_cache(tmp_path, monkeypatch):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"x")
    monkeypatch.setenv("MUSEBRIDGE_CACHE_DIR", str(tmp_path / "mb"))
    path = engine_path(graph, "gpu", "9.0", "10.9")
    assert path == tmp_path / "mb" / "tensorrt" / f"{engine_cache_key(graph, 'gpu', '9.0', '10.9')}.engine"
    assert engine_root() == cache_root().parent / "tensorrt"  # beside the graphs' onnx/
    monkeypatch.delenv("MUSEBRIDGE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engine_path(graph, "gpu", "9.0", "10.9").parent == tmp_path / "xdg" / "musebridge" / "tensorrt"


# --- what the graphs declare, and the profile -------------------------------------------------------------
def test_graph_io_and_profile_of_the_chunk_graph(graphs):
    io = read_graph_io(graphs["chunk", "fp16"])
    L, H, C, D = CFG.n_layer, CFG.n_head, CFG.context, CFG.head_dim
    assert io.cache_fp16 and io.cache_dtype == np.float16 and io.vocab_size == 40 and io.context == C
    assert io.inputs["tokens"] == ("batch", "n") and io.inputs["cache"] == (L, 2, "batch", H, C, D)
    assert io.cache_shape(3) == (L, 2, 3, H, C, D)
    prof = profile_shapes(io)
    assert set(prof) == {"tokens", "feats", "cache"}  # start is a fixed scalar: no range
    assert prof["tokens"] == ((1, 1), (1, 64), (MAX_BATCH, 512))
    assert prof["feats"] == ((1, 1, 5), (1, 64, 5), (MAX_BATCH, 512, 5))
    assert prof["cache"] == ((L, 2, 1, H, C, D), (L, 2, 1, H, C, D), (L, 2, MAX_BATCH, H, C, D))
    assert profile_shapes(io, max_batch=4, max_tokens=32)["tokens"] == ((1, 1), (1, 32), (4, 32))


def test_graph_io_and_profile_of_the_step_graph(graphs):
    io = read_graph_io(graphs["step", "fp32"])
    assert not io.cache_fp16 and io.cache_dtype == np.float32
    prof = profile_shapes(io)
    assert prof["tokens"] == ((1, 1), (1, 1), (MAX_BATCH, 1))
    assert prof["feats"] == ((1, 1, 5), (1, 1, 5), (MAX_BATCH, 1, 5))


def test_damaged_foreign_and_odd_graphs_are_one_line_errors(graphs, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    with pytest.raises(GraphFileError) as e:
        read_graph_io(bad)
    assert "bad.onnx" in _one_line(e)
    with pytest.raises(GraphFileError) as e:
        read_graph_io(tmp_path / "missing.onnx")
    assert "musebridge export" in _one_line(e)
    vi = helper.make_tensor_value_info
    ident = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [vi("x", TensorProto.FLOAT, [1])],
                              [vi("y", TensorProto.FLOAT, [1])])
    other = helper.make_model(ident)
    onnx.save_model(other, str(tmp_path / "other.onnx"))
    with pytest.raises(GraphFileError) as e:
        read_graph_io(tmp_path / "other.onnx")
    assert "not a MuseBridge decoder graph" in _one_line(e)
    io = read_graph_io(graphs["chunk", "fp32"])
    odd = GraphIO(io.path, {**io.inputs, "tokens": ("batch", "seq")}, io.outputs, io.cache_fp16)
    with pytest.raises(GraphFileError) as e:
        profile_shapes(odd)
    assert "'seq'" in _one_line(e)


def test_the_upload_layout_is_aligned_and_never_overlaps():
    for b, n in [(1, 1), (1, 7), (3, 1), (16, 512), (5, 33)]:
        tok, feats, start, used = io_layout(b, n)
        assert tok == 0 and feats >= b * n and start >= feats + b * n * 5 and used == start + 1
        assert feats % 32 == 0 and start % 32 == 0  # 256-byte boundaries for int64
    assert io_layout(MAX_BATCH, 512)[3] >= max(io_layout(b, n)[3] for b in range(1, 17) for n in (1, 100, 512))


# --- here: not available, and saying so in one line ------------------------------------------------------
@pytest.mark.skipif(ON_GPU, reason="TensorRT is usable here")
def test_tensorrt_is_not_listed_here_and_asking_for_it_says_what_to_install():
    assert "tensorrt" not in available_backends()
    with pytest.raises(BackendError) as e:
        open_runtime(backend="tensorrt")
    msg = _one_line(e)
    assert "pip install tensorrt" in msg and "NVIDIA GPU" in msg


@pytest.mark.skipif(ON_GPU or trt_memory._importable("tensorrt"), reason="tensorrt is installed here")
def test_building_without_tensorrt_is_a_one_line_error(graphs, tmp_path):
    with pytest.raises(BackendError) as e:
        trt_engines.build_engine(graphs["step", "fp16"], tmp_path / "x.engine")
    assert "pip install tensorrt" in _one_line(e)


@pytest.mark.skipif(ON_GPU, reason="a GPU is usable here")
def test_no_gpu_buffers_is_a_one_line_error():
    with pytest.raises(BackendError) as e:
        trt_memory.device_memory()
    assert "cupy" in _one_line(e) and "torch" in _one_line(e)


def test_availability_needs_tensorrt_onnx_gpu_buffers_and_a_gpu(monkeypatch):
    have = {"tensorrt", "onnx", "onnxruntime", "cupy"}
    monkeypatch.setattr(trt_memory, "_importable", lambda name: name in have)
    monkeypatch.setattr(trt_memory, "_torch_has_cuda", lambda: False)
    monkeypatch.setattr(trt_memory, "cuda_device_count", lambda: 1)
    assert tensorrt_available()
    assert available_backends()[-1] == "tensorrt"  # listed where usable, after what auto may pick
    monkeypatch.setattr(trt_memory, "cuda_device_count", lambda: 0)
    assert not tensorrt_available() and "tensorrt" not in available_backends()
    monkeypatch.setattr(trt_memory, "cuda_device_count", lambda: 1)
    have.discard("cupy")  # no way to hold device buffers
    assert not tensorrt_available()
    monkeypatch.setattr(trt_memory, "_torch_has_cuda", lambda: True)
    assert tensorrt_available()
    have.discard("tensorrt")
    assert not tensorrt_available()


@pytest.mark.skipif(ON_GPU, reason="a GPU is usable here")
def test_auto_still_prefers_onnxruntime_without_a_gpu():
    if trt_memory._importable("onnxruntime"):
        assert available_backends()[0] == "onnxruntime"


def test_asking_what_is_available_imports_neither_torch_nor_tensorrt(cache_dir):
    code = ("import sys; from musebridge.engine.decode.backends import available_backends; "
            "from musebridge.engine.decode.trt_runtime import tensorrt_available; "
            "available_backends(); tensorrt_available(); "
            "bad = [m for m in ('torch', 'tensorrt', 'cupy') if m in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MUSEBRIDGE_CACHE_DIR": str(cache_dir)})
    assert r.returncode == 0, r.stderr
