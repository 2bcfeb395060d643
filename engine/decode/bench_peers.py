"""The peers `musebridge bench --baselines` holds our runtimes against, each in its own child process.

    torch_eager       our model in plain PyTorch with no cache: every token recomputes the
                      whole prefix (what a naive loop does)
    hf_transformers   Hugging Face GPT-2 with the same layers, width, heads, mlp ratio and
                      vocabulary, random weights, decoding with its KV cache: a manual
                      `past_key_values` loop, and `generate` (rows `hf_transformers_generate`)
    openvino          OpenVINO's CPU plugin running OUR step and chunk ONNX graphs (the files
                      ONNX Runtime runs, `decoder_graphs`), through `CachedRuntime`, so it gives
                      every row our runtimes give (`bench_rows.runtime_rows`)
    ctranslate2       CTranslate2 running a GPT-2 of the same shape as hf_transformers, converted
                      locally from transformers, fp32 (`ctranslate2_int8`: its int8 weights,
                      speed only -- their accuracy is not checked here)

The GPT-2 peers are not our model (learned positions, dense attention over the whole
context, no feature embeddings): they are what a user would otherwise run at this size,
so their decode step grows with the context where ours does not. OpenVINO runs the very
graphs ONNX Runtime runs, so it compares the two engines alone.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from .bench_rows import CONTEXTS, PREFILL, STEPS, _prompt_tokens, _row, _timed, runtime_rows
from .runtime import CachedRuntime

# each peer -> the packages it imports (`bench.available` says "not installed" when one is missing)
PEERS = {
    "torch_eager": ("torch",),
    "hf_transformers": ("torch", "transformers"),
    "openvino": ("openvino",),
    "ctranslate2": ("ctranslate2", "transformers", "torch"),
    "ctranslate2_int8": ("ctranslate2", "transformers", "torch"),
}


def run_peer(backend: str, model_dir: str | None, threads: int) -> list[dict]:
    """Every row one peer gives (what `bench.run_backend` returns for it)."""
    if backend == "torch_eager":
        return _run_eager(model_dir, threads)
    if backend == "hf_transformers":
        return _run_hf(model_dir, threads)
    if backend == "openvino":
        rt = OvRuntime.open(model_dir, threads)
        return runtime_rows(backend, rt, rt.vocab)
    if backend in ("ctranslate2", "ctranslate2_int8"):
        return _run_ctranslate2(model_dir, threads, int8=backend.endswith("int8"))
    raise ValueError(f"unknown peer {backend!r}")


def _peak_rss(backend: str) -> dict:
    return _row(backend, "peak_rss_mb", 0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "MB")


def _model_section(model_dir: str | None) -> dict:
    from ..training.checkpoint import DEFAULT_MODEL, read_model_config

    cfg = read_model_config(model_dir or DEFAULT_MODEL)
    return cfg.get("model", cfg)


# --- our model without a cache ------------------------------------------------------------------------
def _run_eager(model_dir: str | None, threads: int) -> list[dict]:
    """Our model in plain PyTorch with no cache: each token recomputes the whole prefix."""
    import torch

    from ..music.features import features
    from ..training.checkpoint import load_model

    torch.set_num_threads(threads)
    model, vocab, _ = load_model(model_dir)
    model.eval()
    long = _prompt_tokens(vocab, 4096)
    rows = []
    with torch.inference_mode():
        # no cache: a prompt is one forward pass, and so is every decode step at context c
        for metric, sizes, runs in (("prefill_ms", PREFILL, 4), ("decode_step_ms", CONTEXTS, 5)):
            for n in [n for n in sizes if n <= model.cfg.context]:
                toks = np.array(long[:n])
                t, f = torch.from_numpy(toks)[None], torch.from_numpy(features(toks, vocab))[None]
                ms = [_timed(model, t, f) * 1e3 for _ in range(runs)]
                rows.append(_row("torch_eager", metric, n, ms[1:]))
    rows.append(_peak_rss("torch_eager"))
    return rows


# --- GPT-2 of the same shape ---------------------------------------------------------------------------
def _gpt2(mc: dict):
    """A random-weight transformers GPT-2 with our model's layers, width, heads, mlp ratio,
    vocabulary and context (no hub): the shape both GPT-2 peers run."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=mc["n_layer"], n_embd=mc["d_model"], n_head=mc["n_head"],
                                      vocab_size=mc["vocab_size"], n_positions=mc["context"],
                                      n_inner=mc.get("mlp_ratio", 4) * mc["d_model"], bos_token_id=None,
                                      eos_token_id=None)).eval()


def _sizes(sizes: tuple[int, ...], context: int) -> list[int]:
    return [n for n in sizes if n <= context]


def _start(c: int, context: int) -> int:
    """The prompt length before timing STEPS decode steps at context c (they must fit)."""
    return min(c, context - STEPS - 1) - 1


def _run_hf(model_dir: str | None, threads: int) -> list[dict]:
    """GPT-2 of the same shape in Hugging Face transformers, with its own KV cache."""
    import torch

    torch.set_num_threads(threads)
    mc = _model_section(model_dir)
    hf = _gpt2(mc)
    rng = np.random.default_rng(0)
    long = torch.from_numpy(rng.integers(0, mc["vocab_size"], size=(1, mc["context"])))
    rows = []
    name = "hf_transformers"
    with torch.inference_mode():
        for n in _sizes(PREFILL, mc["context"]):
            ms = [_timed(lambda: hf(long[:, :n], use_cache=True)) * 1e3 for _ in range(5)]
            rows.append(_row(name, "prefill_ms", n, ms[1:]))
        for c in _sizes(CONTEXTS, mc["context"]):  # manual past_key_values loop
            start = _start(c, mc["context"])
            past = hf(long[:, :start], use_cache=True).past_key_values
            tok = long[:, start : start + 1]
            ms = []
            for _ in range(STEPS):
                t0 = time.perf_counter()
                past = hf(tok, past_key_values=past, use_cache=True).past_key_values
                ms.append((time.perf_counter() - t0) * 1e3)
            rows.append(_row(name, "decode_step_ms", c, ms[10:]))
        for c in _sizes(CONTEXTS, mc["context"]):  # generate(): per new token, net of its prefill
            ids = long[:, : _start(c, mc["context"])]
            kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
            one = _timed(lambda: hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw))
            many = _timed(lambda: hf.generate(ids, max_new_tokens=STEPS + 1, min_new_tokens=STEPS + 1, **kw))
            rows.append(_row(name + "_generate", "decode_step_ms", c, (many - one) / STEPS * 1e3))
    rows.append(_peak_rss(name))
    return rows


class _Tokens:
    """The stand-in tokenizer CTranslate2's converter asks for: token i is named "t<i>" (the
    GPT-2 has random weights and no tokenizer files, and nothing is fetched from a hub)."""

    bos_token = eos_token = unk_token = "t0"

    def __init__(self, n: int):
        self.n = n

    def get_vocab(self) -> dict[str, int]:
        return {f"t{i}": i for i in range(self.n)}


def _ctranslate2_model(mc: dict, out: Path, int8: bool) -> Path:
    """The GPT-2 of `_gpt2(mc)` saved to `out/hf` and converted to `out/ct2` with CTranslate2's
    own converter (quantized to int8 weights when asked)."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            return _Tokens(mc["vocab_size"])

    _gpt2(mc).save_pretrained(out / "hf")
    Converter(str(out / "hf")).convert(str(out / "ct2"), quantization="int8" if int8 else None, force=True)
    return out / "ct2"


def _run_ctranslate2(model_dir: str | None, threads: int, int8: bool) -> list[dict]:
    """CTranslate2's batch-1 greedy decode of the same-shape GPT-2, `intra_threads` = threads.

    prefill_ms: `generate_batch` of a prompt of n tokens with max_length=1 (the prompt and one
    token, as HF's prefill returns the logits for one). decode_step_ms: the time between calls
    of `generate_batch`'s per-token callback (called from inside its decoding loop) after a
    prompt that brings the cache to the context, the first (which holds the prefill) left out:
    one step with its cache each. (`generate_tokens` cannot time steps: it decodes in a thread
    of its own and its tokens reach Python in bursts.)"""
    import ctranslate2

    name = "ctranslate2_int8" if int8 else "ctranslate2"
    mc = _model_section(model_dir)
    rng = np.random.default_rng(0)
    long = [f"t{i}" for i in rng.integers(0, mc["vocab_size"], size=mc["context"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="musebridge-ct2-") as tmp:
        path = _ctranslate2_model(mc, Path(tmp), int8)
        gen = ctranslate2.Generator(str(path), device="cpu", compute_type="int8" if int8 else "float32",
                                    intra_threads=threads, inter_threads=1)
        for n in _sizes(PREFILL, mc["context"]):
            prompt = [long[:n]]
            ms = [_timed(lambda: gen.generate_batch(prompt, max_length=1, include_prompt_in_result=False,
                                                    end_token=[])) * 1e3 for _ in range(5)]
            rows.append(_row(name, "prefill_ms", n, ms[1:]))
        for c in _sizes(CONTEXTS, mc["context"]):
            stamps: list[float] = []
            gen.generate_batch([long[: _start(c, mc["context"])]], max_length=STEPS + 1, include_prompt_in_result=False,
                               end_token=[], callback=lambda step: stamps.append(time.perf_counter()) and False)
            if len(stamps) != STEPS + 1:
                raise RuntimeError(f"CTranslate2 generated {len(stamps)} tokens, not {STEPS + 1}")
            ms = list(np.diff(stamps) * 1e3)  # between callbacks: one step each
            rows.append(_row(name, "decode_step_ms", c, ms[10:]))
    rows.append(_peak_rss(name))
    return rows


# --- OpenVINO on our own graphs ------------------------------------------------------------------------
class OvRuntime(CachedRuntime):
    """Our step and chunk ONNX graphs compiled by OpenVINO's CPU plugin (fp32, latency hint,
    `INFERENCE_NUM_THREADS` = the bench's threads), with the same fixed-size cache as ours.

    The cache stays in place, but OpenVINO is not the one to write it. Fed as graph input and
    output on one shared buffer, as ONNX Runtime's IOBinding does, the plugin copies the 33 MB
    cache on the way in and on the way out (about 20 ms a step on this machine against 3 ms of
    nodes); made stateful (`MakeStateful` cache -> cache_out) its Assign copies the whole state
    every step (about 14 ms). So the graphs' one ScatterND, the cache write, is cut off when they
    are compiled: `kv_index` and `kv_new`, its indices and rows, become the outputs, the cache
    is a zero-copy input (an `ov.Tensor` on our numpy buffer, which the plugin only reads), and
    `_run` writes the new rows into it with numpy, exactly what the ScatterND would write. The
    graphs read the new tokens' keys and values straight from the projection, never from the
    cache, so nothing reads the rows before they are written."""

    name = "openvino"

    def __init__(self, paths: dict[str, Path], vocab, threads: int):
        import openvino as ov

        self._ov = ov
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        cache_in = core.read_model(str(paths["step"])).input("cache").get_partial_shape()
        shape = tuple(1 if i == 2 else d.get_length() for i, d in enumerate(cache_in))  # batch 1
        super().__init__(vocab, shape[4], 1)
        self.cache = np.zeros(shape, np.float32)
        self.requests = {}
        for kind, n in (("step", 1), ("chunk", -1)):
            model = core.read_model(str(paths[kind]))
            model.reshape({"tokens": [1, n], "feats": [1, n, 5], "start": [], "cache": list(shape)})
            _cut_cache_write(model)
            req = core.compile_model(model, "CPU", config).create_infer_request()
            req.set_tensor("cache", ov.Tensor(self.cache, shared_memory=True))
            self.requests[kind] = req
        self._tokens, self._feats = np.zeros((1, 1), np.int64), np.zeros((1, 1, 5), np.int64)
        self._start = np.zeros((), np.int64)
        step = self.requests["step"]
        step.set_tensor("tokens", ov.Tensor(self._tokens, shared_memory=True))
        step.set_tensor("feats", ov.Tensor(self._feats, shared_memory=True))
        for req in self.requests.values():
            req.set_tensor("start", ov.Tensor(self._start, shared_memory=True))

    @classmethod
    def open(cls, model_dir: str | None, threads: int) -> "OvRuntime":
        """The model's cached fp32 graphs (built on first use, as ONNX Runtime's are)."""
        from musebridge.onnx_export.build import decoder_graphs, model_folder

        from ..training.checkpoint import load_vocab

        folder = model_folder(model_dir)
        return decoder_graphs(folder, "fp32", lambda paths: cls(paths, load_vocab(folder), threads))

    def _run(self, tokens: np.ndarray, feats: np.ndarray, start: int) -> np.ndarray:
        self._start[...] = start
        if tokens.shape[1] == 1:
            self._tokens[...] = tokens
            self._feats[...] = feats
            req = self.requests["step"]
        else:
            req = self.requests["chunk"]
            req.set_tensor("tokens", self._ov.Tensor(np.ascontiguousarray(tokens, np.int64)))
            req.set_tensor("feats", self._ov.Tensor(np.ascontiguousarray(feats, np.int64)))
        req.infer()
        index, rows = req.get_tensor("kv_index").data, req.get_tensor("kv_new").data
        k = index.shape[-1]  # ScatterND: each index row addresses the cache's first k axes
        self.cache[tuple(index.reshape(-1, k).T)] = rows.reshape(-1, *self.cache.shape[k:])
        return req.get_tensor("logits").data.copy()

    def _clear(self) -> None:
        pass  # rows at or past `position` are never read: the next prefill overwrites them

    def _fork_cache(self, n: int) -> "OvRuntime":
        raise NotImplementedError("the bench never forks an OpenVINO runtime")


def _cut_cache_write(model) -> None:
    """Replace the graph's `cache_out` output (its one ScatterND) by that ScatterND's indices and
    rows, `kv_index` and `kv_new` (see `OvRuntime`)."""
    writes = [op for op in model.get_ops() if op.get_type_name() == "ScatterNDUpdate"]
    if len(writes) != 1:
        raise ValueError(f"expected the decoder graph's one cache write (ScatterND), found {len(writes)}")
    write = writes[0]
    name = write.get_friendly_name()
    old = [r for r in model.get_results() if r.input_value(0).get_node().get_friendly_name() == name]
    model.add_outputs([write.input_value(1), write.input_value(2)])
    for r in old:
        model.remove_result(r)
    model.validate_nodes_and_infer_types()
