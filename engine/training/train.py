"""`musebridge train`: AdamW, warmup + cosine, clipping, bf16 on GPU, resumable, DDP.

One process on a laptop CPU, or `torchrun --nproc_per_node=N -m musebridge train ...`
across GPUs and nodes (PyTorch DDP: each rank samples its own windows, rank 0 validates,
logs and writes checkpoints). A run folder holds the model folder (`model/`: weights,
config, vocabulary -- loadable as is), the training state for resume
(`state.safetensors` + `state.json`) and `log.jsonl`, one JSON object per event.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from musebridge.errors import MuseBridgeError

from ..data.batches import WindowSampler
from .checkpoint import save_model
from ..data.dataset import TokenShards
from ..music.features import SECONDS_TICKS_PER_BEAT
from .model import CONFIGS, ModelConfig, MuseModel


@dataclass
class TrainConfig:
    model: str = "small"  # a key of model.CONFIGS
    arch: str = "transformer"  # or "lstm": the baseline with about the same parameter count
    seq_len: int = 2048
    batch_size: int = 4
    steps: int = 2000
    max_minutes: float = 0.0  # stop (and save) after this long; 0 = no limit
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 200
    seed: int = 0
    style_power: float = 0.5
    augment: bool = True
    max_transpose: int = 6  # narrowed to 3, then 1, over the last 40% / 15% of training
    structure_dropout: float = 0.5
    mixup: float = 0.0  # alpha of MuseNet's embedding mixup; 0 = off
    model_overrides: dict = field(default_factory=dict)
    init: str | None = None  # start from this model folder's weights (fine-tuning), not random
    prefix_share: float = 0.9  # windows cut mid-piece that start with their piece's prefix
    revoice_share: float = 0.25  # augmented windows with one melodic part on another family


class TrainError(MuseBridgeError):
    pass


def _init_from(model, folder: str | Path, vocab, mcfg: ModelConfig) -> None:
    """Copy a model folder's weights into a fresh model of the same shape (fine-tuning)."""
    from .checkpoint import load_model

    src, src_vocab, _ = load_model(folder)
    if src_vocab != vocab:
        raise TrainError(f"--init {folder} uses another vocabulary than the data; rebuild the data or train from scratch")
    if getattr(src, "cfg", None) != mcfg:
        raise TrainError(f"--init {folder} has another shape than --config; pick the config it was trained with")
    model.load_state_dict({k: v.float() for k, v in src.state_dict().items()})


def build_model(arch: str, mcfg: ModelConfig):
    """The transformer, or the LSTM baseline sized to the same parameter count."""
    if arch == "transformer":
        return MuseModel(mcfg)
    if arch == "lstm":
        from .baselines import lstm_hidden_for, lstm_model

        target = MuseModel(mcfg).num_params()
        return lstm_model(mcfg.vocab_size, mcfg.d_model, lstm_hidden_for(target, mcfg.vocab_size, mcfg.d_model))
    raise TrainError(f"unknown architecture {arch!r}; use transformer or lstm")


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min((step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


def transpose_at(step: int, cfg: TrainConfig) -> int:
    frac = step / max(cfg.steps, 1)
    return cfg.max_transpose if frac < 0.6 else max(cfg.max_transpose // 2, 1) if frac < 0.85 else 1


def loss_fn(model, toks: torch.Tensor, feats: torch.Tensor, pad: int,
            mix: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> torch.Tensor:
    """Mean next-token cross entropy in nats over non-pad targets."""
    x, f, y = toks[:, :-1], feats[:, :-1], toks[:, 1:]
    if mix is None:
        logits = model(x, f)
        return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=pad)
    toks2, feats2, lam = mix
    logits = model(x, f, mix=(toks2[:, :-1], feats2[:, :-1], lam))
    lg = logits.flatten(0, 1).float()
    return lam * F.cross_entropy(lg, y.flatten(), ignore_index=pad) + (1 - lam) * F.cross_entropy(
        lg, toks2[:, 1:].flatten(), ignore_index=pad)


def _optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = {"fused": True} if torch.cuda.is_available() else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), **kw)


def save_state(run: Path, model, opt: torch.optim.Optimizer, step: int, rng_state: dict, extra: dict) -> None:
    """Weights and optimizer moments as safetensors, counters as JSON: resumable, no pickle."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "head.weight"}
    sd = opt.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
    tmp = run / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(run / "state.safetensors")
    meta = {"step": step, "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]],
            "rng": rng_state, **extra}
    (run / "state.json").write_text(json.dumps(meta))


def load_state(run: Path, model, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(run / "state.safetensors"))
    meta = json.loads((run / "state.json").read_text())
    msd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    msd["head.weight"] = msd["tok.weight"]
    model.load_state_dict(msd)
    sd = opt.state_dict()
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    for g, saved in zip(sd["param_groups"], meta["param_groups"]):
        g.update({k: v for k, v in saved.items() if k != "params"})
    sd["state"] = state
    opt.load_state_dict(sd)
    return meta


def train(data: str | Path, out: str | Path, cfg: TrainConfig, log: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) a model on built shards; returns the last log record."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    device = "cpu"
    if ddp:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
    elif torch.cuda.is_available():
        device = "cuda"
    master = rank == 0
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    shards = TokenShards(data)
    vocab = shards.vocab
    if cfg.model not in CONFIGS:
        raise TrainError(f"unknown model config {cfg.model!r}; use one of {', '.join(CONFIGS)}")
    tpb = vocab.config.ticks_per_beat if vocab.config.time_mode == "beats" else SECONDS_TICKS_PER_BEAT
    mcfg = ModelConfig(vocab_size=len(vocab), ticks_per_beat=tpb, dropout=cfg.dropout,
                       **{**CONFIGS[cfg.model], **cfg.model_overrides})
    if cfg.seq_len > mcfg.context:
        raise TrainError(f"seq_len {cfg.seq_len} exceeds the model context {mcfg.context}")
    torch.manual_seed(cfg.seed + rank)
    model = build_model(cfg.arch, mcfg).to(device)
    opt = _optimizer(model, cfg)
    start_step, best = 0, float("inf")
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    if (run / "state.safetensors").exists():
        meta = load_state(run, model, opt)
        start_step, best = meta["step"], meta.get("best_val", best)
        rng = np.random.default_rng([cfg.seed + 1000 * rank, start_step])
    elif cfg.init:
        _init_from(model, cfg.init, vocab, mcfg)
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)
    train_s = WindowSampler(shards, "train", cfg.seq_len, cfg.style_power)
    val_s = WindowSampler(shards, "val", cfg.seq_len, cfg.style_power)
    vrng = np.random.default_rng(12345)  # the same validation windows every time
    val_batches = [val_s.batch(cfg.batch_size, vrng, augment=False, structure_dropout=0.0, prefix_share=cfg.prefix_share)
                   for _ in range(cfg.eval_batches)]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    logf = (run / "log.jsonl").open("a") if master else None

    def emit(rec: dict) -> None:
        if logf:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
        if log and master:
            log(rec)

    def to_dev(b):
        return torch.from_numpy(b[0]).to(device), torch.from_numpy(b[1]).to(device)

    @torch.no_grad()
    def validate() -> float:
        model.eval()
        losses = []
        for b in val_batches:
            with amp:
                losses.append(loss_fn(model, *to_dev(b), vocab.pad).item())
        model.train()
        return float(np.mean(losses))

    if master:
        emit({"event": "start", "step": start_step, "params": model.num_params(), "model": mcfg.to_dict() if cfg.arch == "transformer" else model.cfg,
              "train": asdict(cfg), "device": device, "train_tokens": int(len(train_s.tokens)), "time": time.time()})
    t0 = time.time()
    tokens_seen = 0
    rec: dict = {}
    step = start_step
    model.train()
    while step < cfg.steps:
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        b = train_s.batch(cfg.batch_size, rng, cfg.augment, transpose_at(step, cfg), cfg.structure_dropout,
                          cfg.prefix_share, cfg.revoice_share)
        toks, feats = to_dev(b)
        mix = None
        if cfg.mixup > 0:
            b2 = train_s.batch(cfg.batch_size, rng, cfg.augment, transpose_at(step, cfg), cfg.structure_dropout,
                               cfg.prefix_share, cfg.revoice_share)
            mix = (*to_dev(b2), float(rng.beta(cfg.mixup, cfg.mixup)))
        with amp:
            loss = loss_fn(net, toks, feats, vocab.pad, mix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        tokens_seen += int((toks[:, 1:] != vocab.pad).sum()) * (int(os.environ.get("WORLD_SIZE", "1")))
        elapsed = time.time() - t0
        out_of_time = cfg.max_minutes and elapsed > cfg.max_minutes * 60
        rec = {"event": "step", "step": step, "loss": round(loss.item(), 4), "lr": lr, "grad_norm": round(float(gnorm), 3),
               "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1), "elapsed_s": round(elapsed, 1)}
        if master and (step % cfg.eval_every == 0 or step == cfg.steps or out_of_time):
            val = validate()
            rec = {**rec, "event": "eval", "val_loss": round(val, 4)}
            if val < best:
                best = val
                save_model(run / "model", model, vocab, {"step": step, "val_loss_nats": val, "train": asdict(cfg)})
        if master:
            emit(rec)
            if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
                save_state(run, model, opt, step, {}, {"best_val": best})
        if out_of_time:
            break
    if logf:
        emit({"event": "end", "step": step, "best_val_loss": best, "elapsed_s": round(time.time() - t0, 1)})
        logf.close()
    if ddp:
        import torch.distributed as dist

        dist.destroy_process_group()
    return {**rec, "best_val_loss": best}
