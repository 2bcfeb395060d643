"""`musebridge data build`: sources -> tokenized shards, in parallel, resumable.

Parsing is the cost (the music21 corpus is ~6,000 CPU-seconds), so workers parse and
encode each piece's body once and the results go to a cache folder in small chunk
files as they arrive; a rerun skips every piece already cached. Assembly then adds
each piece's prefix (its style id depends on the final style list) and writes one
uint16 memmap per split plus `manifest.json` and `vocab.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import warnings
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from musebridge.errors import DataError, MuseBridgeError

from .sources import SPLITS, PieceTask, load_piece, split_of, tasks_for_source
from ..music.tokenizer import StreamEncoder, encode_events
from ..music.vocab import NOTE, VocabConfig, Vocabulary

DATA_FORMAT = "musebridge-data"
DATA_VERSION = 1
CACHE_DIR = ".cache"


@dataclass
class PieceResult:
    """What a worker returns for one task: body tokens and facts, or an error."""

    key: str
    tokens: np.ndarray | None
    families: list[str] = field(default_factory=list)
    notes: int = 0
    seconds: float = 0.0
    error: str | None = None
    kind: str | None = None  # the reader that made it (`PieceTask.kind`; None: cached before readers were recorded)


class _Timeout(Exception):
    pass


def _on_alarm(signum, frame):  # noqa: ARG001
    raise _Timeout()


_WORKER_VOCAB: Vocabulary | None = None


def _init_worker(config: VocabConfig) -> None:
    global _WORKER_VOCAB
    _WORKER_VOCAB = Vocabulary(config)
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def process_task(task: PieceTask, vocab: Vocabulary, timeout: float = 0) -> PieceResult:
    """Parse and encode one piece; every failure becomes a one-line error."""
    t0 = time.perf_counter()
    if timeout:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        piece = load_piece(task)
        body, _ = encode_events(piece, vocab)
    except _Timeout:
        return PieceResult(task.key, None, error=f"timed out after {timeout:.0f} s", seconds=time.perf_counter() - t0,
                           kind=task.kind)
    except MuseBridgeError as e:
        return PieceResult(task.key, None, error=str(e), seconds=time.perf_counter() - t0, kind=task.kind)
    except Exception as e:  # a bad file must never stop the build
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        return PieceResult(task.key, None, error=f"{type(e).__name__}: {msg}", seconds=time.perf_counter() - t0,
                           kind=task.kind)
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)
    tokens = np.asarray(body, dtype=np.uint16)
    notes = int(np.count_nonzero((vocab.kind[tokens] == NOTE) & (vocab.vbin[tokens] > 0))) if len(tokens) else 0
    if notes == 0:
        return PieceResult(task.key, None, error="no notes", seconds=time.perf_counter() - t0, kind=task.kind)
    return PieceResult(task.key, tokens, piece.families, notes, time.perf_counter() - t0, kind=task.kind)


def _worker(args: tuple[PieceTask, float]) -> PieceResult:
    task, timeout = args
    assert _WORKER_VOCAB is not None
    return process_task(task, _WORKER_VOCAB, timeout)


# Readers whose output changed after the cache began recording each piece's reader: a piece
# cached with no reader recorded is read again when its task uses one of these.
CHANGED_READERS = frozenset({"pop909"})  # POP909's piano versions, re-timed on their annotated beats


def _stale(cached: PieceResult, task: PieceTask) -> bool:
    """A cached piece that another reader made (the task's reader changed since)."""
    if cached.kind is None:
        return task.kind in CHANGED_READERS
    return cached.kind != task.kind


class ResultCache:
    """Chunk files of finished results in OUT/.cache; what resume reads back."""

    def __init__(self, folder: Path, config: VocabConfig):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        cfg_file = folder / "config.json"
        cfg = asdict(config)
        cfg["styles"] = []
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            if old != json.loads(json.dumps(cfg)):
                raise DataError(
                    f"{folder} was built with another token config; use a new --out folder or add --fresh"
                )
        else:
            cfg_file.write_text(json.dumps(cfg, indent=1))
        self._pending: list[PieceResult] = []
        self._last_flush = time.monotonic()
        self._n = len(list(folder.glob("chunk-*.npz")))

    def load(self) -> dict[str, PieceResult]:
        """Every cached result, by key (unreadable chunks -- e.g. from a kill -- are skipped)."""
        out: dict[str, PieceResult] = {}
        for chunk in sorted(self.folder.glob("chunk-*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as z:
                    tokens, lengths = z["tokens"], z["lengths"]
                    metas = json.loads(str(z["meta"]))
            except Exception:
                continue
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for i, m in enumerate(metas):
                toks = tokens[offsets[i] : offsets[i + 1]] if m.get("error") is None else None
                out[m["key"]] = PieceResult(m["key"], toks, m["families"], m["notes"], m["seconds"], m.get("error"),
                                            m.get("kind"))
        return out

    def add(self, result: PieceResult) -> None:
        self._pending.append(result)
        if len(self._pending) >= 500 or time.monotonic() - self._last_flush > 30:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        lengths = np.array([0 if r.tokens is None else len(r.tokens) for r in self._pending], np.int64)
        toks = [r.tokens for r in self._pending if r.tokens is not None]
        tokens = np.concatenate(toks) if toks else np.zeros(0, np.uint16)
        metas = [
            {"key": r.key, "families": r.families, "notes": r.notes, "seconds": round(r.seconds, 3), "error": r.error,
             "kind": r.kind}
            for r in self._pending
        ]
        self._n += 1
        final = self.folder / f"chunk-{self._n:05d}-{os.getpid()}.npz"
        tmp = final.with_suffix(".tmp.npz")
        np.savez(tmp, tokens=tokens, lengths=lengths, meta=np.array(json.dumps(metas)))
        tmp.replace(final)
        self._pending.clear()
        self._last_flush = time.monotonic()


@dataclass
class BuildSummary:
    pieces: int
    failed: int
    notes: int
    tokens: int
    parsed_now: int
    seconds: float
    cpu_seconds: float
    vocab_size: int
    out: str


def collect_tasks(sources: Iterable[str]) -> list[PieceTask]:
    """Tasks of every source, deduplicated by key, in a stable order."""
    tasks: dict[str, PieceTask] = {}
    for s in sources:
        for t in tasks_for_source(s):
            tasks.setdefault(t.key, t)
    if not tasks:
        raise DataError("the sources hold no pieces; pass --source music21 or a folder with .mid files")
    return sorted(tasks.values(), key=lambda t: t.key)


def build(
    sources: list[str] | list[PieceTask],
    out: str | Path,
    config: VocabConfig = VocabConfig(),
    workers: int | None = None,
    timeout: float = 300.0,
    limit: int | None = None,
    fresh: bool = False,
    progress: Callable[[int, int, PieceResult], None] | None = None,
) -> BuildSummary:
    """Build shards from sources (or tasks already listed) into `out`; resumes from
    `out/.cache` unless `fresh`."""
    t0 = time.perf_counter()
    out = Path(out)
    tasks = list(sources) if sources and isinstance(sources[0], PieceTask) else collect_tasks(sources)  # type: ignore[arg-type]
    if limit is not None:
        tasks = tasks[:limit]
    cache_dir = out / CACHE_DIR
    if fresh and cache_dir.exists():
        for f in cache_dir.glob("*"):
            f.unlink()
    cache = ResultCache(cache_dir, config)
    results = cache.load()
    todo = [t for t in tasks if t.key not in results or _stale(results[t.key], t)]
    done = len(tasks) - len(todo)
    workers = max(1, workers or os.cpu_count() or 1)
    try:
        with contextlib.ExitStack() as stack:
            if workers == 1 or len(todo) <= 1:
                vocab = Vocabulary(config)
                parsed: Iterable[PieceResult] = (process_task(task, vocab, timeout) for task in todo)
            else:
                pool = stack.enter_context(get_context("forkserver").Pool(
                    workers, initializer=_init_worker, initargs=(config,), maxtasksperchild=200))
                parsed = pool.imap_unordered(_worker, [(t, timeout) for t in todo], chunksize=1)
            for r in parsed:  # in this process, as each task comes back: cached for a resume
                results[r.key] = r
                cache.add(r)
                done += 1
                if progress:
                    progress(done, len(tasks), r)
    finally:
        cache.flush()
    summary = assemble(tasks, results, config, out)
    summary.parsed_now = len(todo)
    summary.seconds = time.perf_counter() - t0
    return summary


def assemble(tasks: list[PieceTask], results: dict[str, PieceResult], config: VocabConfig, out: Path) -> BuildSummary:
    """Write vocab.json, one memmap per split and manifest.json from cached results."""
    ok = [(t, results[t.key]) for t in tasks if t.key in results and results[t.key].tokens is not None]
    failed = [{"id": t.key, "error": results[t.key].error} for t in tasks if t.key in results and results[t.key].tokens is None]
    vocab = Vocabulary(config.with_styles([t.style for t, _ in ok]))
    vocab.save(out / "vocab.json")
    enc = StreamEncoder(vocab)
    pieces = []
    per_split: dict[str, list[tuple[list[int], np.ndarray]]] = {s: [] for s in SPLITS}
    for t, r in ok:
        split = t.split or split_of(t.group)
        prefix = enc.prefix(t.style, r.families)
        per_split[split].append((prefix, r.tokens))
        pieces.append({
            "id": t.key, "source": t.source, "style": t.style, "group": t.group, "instruments": r.families,
            "notes": r.notes, "tokens": len(prefix) + len(r.tokens) + 1, "split": split, "offset": 0,
        })
    splits = {}
    by_split = {s: [p for p in pieces if p["split"] == s] for s in SPLITS}
    for s in SPLITS:
        total = sum(p["tokens"] for p in by_split[s])
        path = out / f"{s}.bin"
        mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=(max(total, 1),))
        pos = 0
        for p, (prefix, body) in zip(by_split[s], per_split[s]):
            p["offset"] = pos
            n = p["tokens"]
            mm[pos : pos + len(prefix)] = prefix
            mm[pos + len(prefix) : pos + n - 1] = body
            mm[pos + n - 1] = vocab.end
            pos += n
        mm.flush()
        del mm
        splits[s] = {"file": path.name, "tokens": total, "pieces": len(by_split[s])}
    manifest = {
        "format": DATA_FORMAT,
        "version": DATA_VERSION,
        "vocab": "vocab.json",
        "dtype": "uint16",
        "splits": splits,
        "pieces": pieces,
        "failed": failed,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=0))
    tmp.replace(out / "manifest.json")
    return BuildSummary(
        pieces=len(pieces), failed=len(failed), notes=sum(p["notes"] for p in pieces),
        tokens=sum(p["tokens"] for p in pieces), parsed_now=0, seconds=0.0,
        cpu_seconds=sum(r.seconds for r in results.values()), vocab_size=len(vocab), out=str(out),
    )
