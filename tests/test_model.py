"""The sparse transformer: causality, and every fast path equal to the dense reference."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from musebridge.engine.training.model import KVCache, ModelConfig, MuseModel, local_mask, strided_mask  # noqa: E402


def _model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, window=8, context=96, **kw)
    return MuseModel(cfg).eval()


def _inputs(b, t, seed=1):
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, 97, (b, t), generator=g)
    feats = torch.stack([torch.randint(0, 12, (b, t), generator=g), torch.randint(0, 48, (b, t), generator=g),
                         torch.randint(0, 16, (b, t), generator=g), torch.randint(0, 129, (b, t), generator=g),
                         torch.randint(0, 129, (b, t), generator=g)], dim=-1)
    return tok, feats


def test_patterns():
    lm, sm = local_mask(40, 8), strided_mask(40, 8)
    assert lm[20].nonzero().flatten().tolist() == list(range(13, 21))
    assert sm[20].nonzero().flatten().tolist() == [4, 12, 20]
    assert not (lm | sm).triu(1).any()


@pytest.mark.parametrize("t", [96, 61])
def test_sparse_blocked_equals_dense_masked(t):
    m = _model()
    tok, f = _inputs(2, t)
    with torch.no_grad():
        assert torch.allclose(m(tok, f), m(tok, f, dense=True), atol=1e-5)


def test_causal_logits_never_depend_on_later_tokens():
    m = _model()
    tok, f = _inputs(1, 80)
    tok2, f2 = tok.clone(), f.clone()
    tok2[0, 50:] = (tok2[0, 50:] + 7) % 97
    f2[0, 50:] = 0
    with torch.no_grad():
        for dense in (False, True):
            a, b = m(tok, f, dense=dense), m(tok2, f2, dense=dense)
            assert torch.allclose(a[:, :50], b[:, :50], atol=1e-6)
            assert not torch.allclose(a[:, 50:], b[:, 50:], atol=1e-3)


def test_cached_steps_and_appends_equal_dense_forward():
    m = _model()
    tok, f = _inputs(2, 96)
    with torch.no_grad():
        ref = m(tok, f, dense=True)
        # prefill 30, then one token at a time
        cache = KVCache(m.cfg, 2)
        outs = [m.prefill_into(tok[:, :30], f[:, :30], cache)]
        outs += [m.forward_cached(tok[:, i:i + 1], f[:, i:i + 1], cache, i) for i in range(30, 96)]
        assert (torch.cat(outs, 1) - ref).abs().max() < 1e-5
        # appends in uneven pieces equal one prefill
        cache2 = KVCache(m.cfg, 2)
        pieces, s = [], 0
        for n in (1, 5, 13, 2, 40, 35):
            pieces.append(m.forward_cached(tok[:, s:s + n], f[:, s:s + n], cache2, s))
            s += n
        assert (torch.cat(pieces, 1) - ref).abs().max() < 1e-5
        for i in range(m.cfg.n_layer):
            assert torch.allclose(cache.k[i], cache2.k[i], atol=1e-5)


def test_fork_copies_the_prompt():
    m = _model()
    tok, f = _inputs(1, 40)
    with torch.no_grad():
        cache = KVCache(m.cfg, 1)
        m.prefill_into(tok, f, cache)
        forked = cache.repeat(3, upto=40)
        nxt = torch.full((3, 1), 5)
        a = m.forward_cached(nxt, f[:, :1].expand(3, 1, 5), forked, 40)
        full = m(torch.cat([tok, nxt[:1]], 1), torch.cat([f, f[:, :1]], 1), dense=True)[:, -1]
        assert (a[:, 0] - full).abs().max() < 1e-5


def test_context_limit_is_an_error():
    m = _model()
    tok, f = _inputs(1, 97)
    with pytest.raises(ValueError, match="context"):
        m(tok, f)


def _runtime_pair(device: str, graphs: bool):
    from musebridge.engine.decode.torch_runtime import TorchRuntime
    from musebridge.engine.music.vocab import Vocabulary

    vocab = Vocabulary()
    torch.manual_seed(0)
    model = MuseModel(ModelConfig(vocab_size=len(vocab), n_layer=2, n_head=4, d_model=32, window=8, context=96)).eval()
    return (TorchRuntime(model, vocab, device=device, cuda_graphs=False),
            TorchRuntime(model, vocab, device=device, cuda_graphs=graphs))


def _same_decode(plain, fast, atol: float) -> None:
    """Prefill, steps at many positions, an append, a rewind, a fork and a slide past the
    context: the static-step path gives the plain path's logits all the way."""
    rng = np.random.default_rng(0)
    toks = [int(t) for t in rng.integers(0, len(plain.vocab), 400)]
    for rt in (plain, fast):
        rt.outs = [rt.prefill(toks[:20])]
        rt.outs += [rt.step(t) for t in toks[20:40]]
        m = rt.mark()
        rt.outs.append(rt.append(toks[40:45]))
        assert rt.rewind(m)
        rt.outs += [rt.step(t) for t in toks[40:130]]  # 130 > context 96: slides, steps go on
        many = rt.fork(2)
        rt.outs += [many.step([toks[130 + i], toks[131 + i]]) for i in range(5)]
    assert fast.slides == plain.slides > 0
    for a, b in zip(plain.outs, fast.outs):
        assert np.abs(a - b).max() <= atol



def test_static_step_equals_the_plain_path_on_the_cpu():
    """What a CUDA graph replays (static buffers, the position as a tensor), run eagerly."""
    plain, fast = _runtime_pair("cpu", graphs=True)
    _same_decode(plain, fast, 1e-5)
    assert fast._step is not None and fast._step.graph is None  # the static path ran, uncaptured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
def test_cuda_graph_step_equals_the_plain_path():
    plain, fast = _runtime_pair("cuda", graphs=True)
    _same_decode(plain, fast, 1e-4)
    assert fast._step.graph is not None
