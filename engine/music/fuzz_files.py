"""Mutated MIDI files, and a runner that feeds them to `read_midi` and `musebridge generate`.

One generator serves both the test suite (tests/test_fuzz_midi.py, where hypothesis
drives the `random.Random` passed in) and the standalone runner here, which puts the big
count through real subprocesses with a timeout and measures each one's peak RSS:

    python -m musebridge.engine.music.fuzz_files --cases 1000 --generate 300 --timeout 30

A file is a valid small SMF (notes with running status, tempo, time and key signatures,
SMPTE offset, text, sysex and escape events) with one to three mutations: truncation,
byte flips and inserts, wrong chunk lengths and counts, huge delta times (VLQs up to
FF FF FF 7F), running status without a status, meta events of bad lengths and values,
sysex/escape events of bad lengths, a RIFF (RMID) wrapper; or not MIDI at all (empty,
text, random bytes). The outcome a user may see is the contract checked: `read_midi`
returns a Piece or raises MidiFileError on one line; `generate` exits 0 with a readable
file or 2 with one `error:` line, never 1 ("unexpected"), a traceback or a hang, and
never leaves a temp file or destroys the file it would have replaced.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# --- building blocks ------------------------------------------------------------------------


def vlq(n: int) -> bytes:
    """MIDI's variable-length quantity (any size: mutations go past the 4-byte limit)."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def chunk(tag: bytes, data: bytes, length: int | None = None) -> bytes:
    return tag + struct.pack(">I", len(data) if length is None else length & 0xFFFFFFFF) + data


def header(fmt: int = 1, ntracks: int = 1, division: int = 96) -> bytes:
    return chunk(b"MThd", struct.pack(">HHH", fmt & 0xFFFF, ntracks & 0xFFFF, division & 0xFFFF))


def smf(tracks: list[bytes], fmt: int = 1, division: int = 96) -> bytes:
    """A standard MIDI file of these track bodies (each ends as given: add `END` yourself)."""
    return header(fmt, len(tracks), division) + b"".join(chunk(b"MTrk", t) for t in tracks)


def meta(kind: int, data: bytes, delta: int = 0, length: int | None = None) -> bytes:
    """A meta event: delta, FF, type, length (a lie if `length` is given), data."""
    return vlq(delta) + bytes([0xFF, kind]) + vlq(len(data) if length is None else length) + data


END = meta(0x2F, b"")


def base_tracks(rng: random.Random) -> list[bytes]:
    """A small valid type-1 file's tracks: a tempo/meta track and one or two note tracks."""
    tempo = rng.choice([500000, 400000, 750000])
    t0 = (meta(0x03, b"fuzz") + meta(0x51, tempo.to_bytes(3, "big")) + meta(0x58, bytes([4, 2, 24, 8]))
          + meta(0x59, bytes([0, 0])) + meta(0x54, bytes([0x41, 0, 0, 0, 0])) + meta(0x01, b"text \xe9\x00\xff")
          + meta(0x58, bytes([3, 2, 24, 8]), delta=96 * 8) + END)
    tracks = [t0]
    for ch in rng.sample([0, 1, 9], rng.randint(1, 2)):
        body = bytearray(vlq(0) + bytes([0xC0 | ch, rng.randrange(128)]))
        body += vlq(0) + bytes([0xF0]) + vlq(4) + bytes([0x7E, 0x7F, 0x09, 0xF7])  # a sysex
        for i in range(rng.randint(2, 12)):
            pitch = rng.randint(30, 90)
            body += vlq(rng.choice([0, 24, 48, 96])) + bytes([0x90 | ch, pitch, rng.randint(1, 127)])
            body += vlq(rng.choice([24, 48, 96])) + bytes([pitch, 0])  # running status, velocity-0 off
        body += vlq(0) + bytes([0xB0 | ch, 64, 127]) + vlq(48) + bytes([64, 0])  # pedal
        body += vlq(0) + bytes([0xF7]) + vlq(2) + bytes([0x01, 0x02])  # an escape
        tracks.append(bytes(body) + END)
    return tracks


# Meta events with bad lengths or values: tempo 0, keys of 127 sharps, 0/4 and 4/2**255,
# SMPTE frame-rate codes mido has no name for, sequence numbers of one byte, odd text.
BAD_METAS = [
    (0x51, b"\x00\x00\x00"), (0x51, b""), (0x51, b"\x07"), (0x51, b"\xff\xff\xff\xff\xff"), (0x51, b"\x00\x00\x01"),
    (0x59, b"\x7f\x05"), (0x59, b"\x00"), (0x59, b""), (0x59, b"\x08\x00"), (0x59, b"\xf8\x01"),
    (0x58, b"\x00\x02\x18\x08"), (0x58, b"\x04\x07\x18\x08"), (0x58, b"\x04\xff\x18\x08"), (0x58, b""), (0x58, b"\x04"),
    (0x58, b"\xff\x00\x18\x08"), (0x54, b"\xe0\x00\x00\x00\x00"), (0x54, b"\x80"), (0x54, b""),
    (0x00, b"\x01"), (0x00, b""), (0x20, b""), (0x21, b""), (0x2F, b"\x01\x02"), (0x7F, b""),
    (0x01, b"\xff\xfe\x00\x80odd"), (0x03, bytes(range(256))), (0x05, b"\xc3("), (0x60, b"\x01\x02"),
]


# --- mutations ------------------------------------------------------------------------------


def _splice(data: bytes, rng: random.Random, piece: bytes) -> bytes:
    """`piece` inserted at an event boundary of a track (its start, or before its last
    4 bytes, the end-of-track), the track's length fixed, so the parser reaches it."""
    spots = [i for i in range(len(data) - 7) if data[i:i + 4] == b"MTrk"]
    if not spots:
        return data + piece
    at = rng.choice(spots)
    size = struct.unpack(">I", data[at + 4:at + 8])[0]
    body = data[at + 8:at + 8 + size]
    pos = rng.choice([0, max(len(body) - 4, 0)])
    body = body[:pos] + piece + body[pos:]
    return data[:at] + chunk(b"MTrk", body) + data[at + 8 + size:]


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _flip(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def _set_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if b:
            b[rng.randrange(len(b))] = rng.choice([0x00, 0x7F, 0x80, 0xF0, 0xF7, 0xFF, rng.randrange(256)])
    return bytes(b)


def _insert(data: bytes, rng: random.Random) -> bytes:
    pos = rng.randrange(len(data) + 1)
    return data[:pos] + rng.randbytes(rng.randint(1, 16)) + data[pos:]


def _chunk_length(data: bytes, rng: random.Random) -> bytes:
    """A chunk length (header or a track) set to a lie: 0, short, long, huge."""
    spots = [i + 4 for i in range(len(data) - 7) if data[i:i + 4] in (b"MThd", b"MTrk")]
    if not spots:
        return data
    at = rng.choice(spots)
    old = struct.unpack(">I", data[at:at + 4])[0]
    new = rng.choice([0, 1, 5, max(old - rng.randint(1, 4), 0), old + rng.randint(1, 64), 0x7FFFFFFF, 0xFFFFFFFF])
    return data[:at] + struct.pack(">I", new) + data[at + 4:]


def _header_fields(data: bytes, rng: random.Random) -> bytes:
    """Format, track count or division set to something odd (SMPTE, 0, 65535, ...)."""
    if len(data) < 14 or data[:4] != b"MThd":
        return data
    b = bytearray(data)
    field_at = rng.choice([8, 10, 12])
    b[field_at:field_at + 2] = struct.pack(">H", rng.choice([0, 1, 2, 3, 255, 0x7FFF, 0x8000, 0xE728, 0xFFFF]))
    return bytes(b)


def _huge_delta(data: bytes, rng: random.Random) -> bytes:
    """Events after the longest legal delta (FF FF FF 7F), or an over-long VLQ."""
    big = rng.choice([b"\xff\xff\xff\x7f", b"\x8f\xff\xff\x7f", b"\xff\xff\xff\xff\x7f", b"\x81\x80\x80\x00"])
    notes = b"".join(big + bytes([0x90, rng.randint(30, 90), 64]) + big + bytes([0x80, 60, 0])
                     for _ in range(rng.randint(1, 6)))
    return _splice(data, rng, notes)


def _bad_meta(data: bytes, rng: random.Random) -> bytes:
    kind, payload = rng.choice(BAD_METAS)
    lie = rng.choice([None, None, 0, len(payload) + 1, 0x0FFFFFFF])
    return _splice(data, rng, meta(kind, payload, rng.choice([0, 1, 0x0FFFFFFF]), lie))


def _running_status(data: bytes, rng: random.Random) -> bytes:
    """Data bytes with no status before them, at a track's start or after a meta."""
    return _splice(data, rng, vlq(0) + bytes([rng.randrange(128), rng.randrange(128)]))


def _sysex(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice([0xF0, 0xF7])
    body = rng.randbytes(rng.randint(0, 12))
    length = rng.choice([len(body), 0, len(body) + 5, 0x0FFFFFFF])
    return _splice(data, rng, vlq(0) + bytes([kind]) + vlq(length) + body)


def _status_bytes(data: bytes, rng: random.Random) -> bytes:
    """Undefined or system statuses inside a track (F1-F6 but F0/F7, F4, F5, F9, FD)."""
    return _splice(data, rng, vlq(0) + bytes([rng.choice([0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF8, 0xF9, 0xFD, 0xFE])])
                   + rng.randbytes(rng.randint(0, 3)))


def _riff(data: bytes, rng: random.Random) -> bytes:
    """The SMF inside a RIFF RMID wrapper (sometimes with a wrong size)."""
    inner = b"data" + struct.pack("<I", len(data)) + data
    riff = b"RIFF" + struct.pack("<I", len(inner) + 4 + rng.choice([0, 0, 7])) + b"RMID" + inner
    return riff + (b"\x00" if len(data) % 2 else b"")


def _extra_tracks(data: bytes, rng: random.Random) -> bytes:
    """Junk chunks between tracks, or a declared track count the file does not hold."""
    junk = chunk(rng.choice([b"XFIH", b"MTrk", b"\x00\x00\x00\x00"]), rng.randbytes(rng.randint(0, 10)))
    return data + junk


MUTATIONS = [_truncate, _flip, _set_bytes, _insert, _chunk_length, _header_fields, _huge_delta, _bad_meta,
             _running_status, _sysex, _status_bytes, _riff, _extra_tracks]


def not_midi(rng: random.Random) -> bytes:
    """Files that are no MIDI at all: empty, a header alone, text, random bytes, a WAV."""
    return rng.choice([
        b"", b"M", b"MThd", b"MThd\x00\x00\x00\x06", header(), b"hello, I am a text file\n" * rng.randint(1, 20),
        rng.randbytes(rng.randint(1, 400)), b"RIFF\x24\x00\x00\x00WAVEfmt " + rng.randbytes(20),
        b"RIFF\x04\x00\x00\x00RMID", b"\x00" * rng.randint(1, 100),
    ])


def mutated(rng: random.Random) -> bytes:
    """One fuzz case: usually a valid file with 1-3 mutations, sometimes not MIDI at all."""
    if rng.random() < 0.08:
        return not_midi(rng)
    fmt = rng.choice([0, 1, 1, 1, 2])
    tracks = base_tracks(rng)
    data = smf([b"".join(t[:-len(END)] for t in tracks) + END] if fmt == 0 else tracks, fmt,
               rng.choice([96, 96, 480, 1, 7]))
    for m in rng.sample(MUTATIONS, rng.randint(1, 3)):
        data = m(data, rng)
    return data


# --- the runner -----------------------------------------------------------------------------

READ_SNIPPET = """
import sys
from musebridge.engine.music.midi_file import read_midi
from musebridge.errors import MuseBridgeError
try:
    p = read_midi(sys.argv[1])
except MuseBridgeError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
print(f"{len(p.notes)} notes over {p.end:.1f} beats")
"""


@dataclass
class Tally:
    """What the runner saw, per kind of case."""

    cases: int = 0
    ok: int = 0
    clean_errors: int = 0
    tracebacks: int = 0
    hangs: int = 0
    unexpected: int = 0  # exit 1, "unexpected", a signal, or an error that is not one line
    bad_outputs: int = 0  # a temp file left, a partial or unreadable output, a destroyed file
    over_rss: int = 0
    max_rss_mb: float = 0.0
    max_seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (f"{name}: {self.cases} cases, {self.ok} read/written, {self.clean_errors} one-line errors; "
                f"tracebacks {self.tracebacks}, hangs {self.hangs}, unexpected {self.unexpected}, "
                f"partial/destroyed outputs {self.bad_outputs}, over the RSS bound {self.over_rss}; "
                f"max RSS {self.max_rss_mb:.0f} MB, slowest {self.max_seconds:.1f} s")


def run_bounded(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, str, float, float]:
    """(exit code or None if killed for time, stdout, stderr, peak RSS in MB, seconds) of one child.

    Output goes to files, not pipes, so a chatty child never blocks; the child's own
    rusage (wait4) gives its peak RSS; past `timeout` its whole process group is killed.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        rc: int | None = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, _, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        proc.returncode = -1  # reaped here: Popen must not wait on it again
        seconds = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"), usage.ru_maxrss / 1024, seconds


def judge(tally: Tally, rc: int | None, stderr: str, rss: float, seconds: float, rss_bound: float, what: str) -> bool:
    """Count one child's outcome; True if it was a success (exit 0)."""
    tally.cases += 1
    tally.max_rss_mb = max(tally.max_rss_mb, rss)
    tally.max_seconds = max(tally.max_seconds, seconds)
    lines = [line for line in stderr.splitlines() if line.strip()]
    bad = None
    if rss > rss_bound:
        tally.over_rss += 1
        bad = f"RSS {rss:.0f} MB"
    if rc is None:
        tally.hangs += 1
        bad = "hang"
    elif "Traceback" in stderr:
        tally.tracebacks += 1
        bad = "traceback"
    elif rc == 0:
        tally.ok += 1
    elif rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "unexpected" not in lines[0]:
        tally.clean_errors += 1
    else:
        tally.unexpected += 1
        bad = f"exit {rc}: {' | '.join(lines)[:300]}"
    if bad and len(tally.examples) < 20:
        tally.examples.append(f"{what}: {bad}")
    return rc == 0 and not bad


def _special_files(folder: Path) -> list[Path]:
    """A FIFO, a folder, a socket and a device: what a user may pass by mistake."""
    import socket

    out = []
    fifo = folder / "fifo.mid"
    os.mkfifo(fifo)
    out.append(fifo)
    (folder / "dir.mid").mkdir()
    out.append(folder / "dir.mid")
    sock_path = folder / "sock.mid"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))  # left bound for the process's life: the file stays a socket
    out.append(sock_path)
    out += [Path("/dev/null"), Path("/dev/zero")]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m musebridge.engine.music.fuzz_files", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="mutated files through read_midi (each its own process)")
    ap.add_argument("--generate", type=int, default=300, help="how many of them also go through `musebridge generate`")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take before it counts as a hang")
    ap.add_argument("--rss-mb", type=float, default=1500.0, help="peak RSS a case may reach")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--model", default=None, help="model folder for generate (default: the shipped model)")
    ap.add_argument("--keep", default=None, help="keep the failing cases in this folder")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="musebridge-fuzz-"))
    env = dict(os.environ, MUSEBRIDGE_CACHE_DIR=str(work / "cache"), OMP_NUM_THREADS="1")
    rng = random.Random(args.seed)
    cases = [mutated(rng) for _ in range(args.cases)]
    paths = []
    for i, data in enumerate(cases):
        p = work / f"case{i:05d}.mid"
        p.write_bytes(data)
        paths.append(p)
    specials = _special_files(work)
    reads, gens = Tally(), Tally()
    model = ["--model", args.model] if args.model else []

    def read(path: Path) -> None:
        rc, _, err, rss, s = run_bounded([sys.executable, "-c", READ_SNIPPET, str(path)], args.timeout, env)
        if not judge(reads, rc, err, rss, s, args.rss_mb, path.name) and rc != 2 and args.keep and path.is_file():
            shutil.copy(path, args.keep)

    def generate(i: int, path: Path) -> None:
        out_dir = work / f"out{i:05d}"
        out_dir.mkdir()
        out = out_dir / "clip.mid"
        good = None
        if i % 2:  # half the cases replace an existing good file: a failure must leave it as it was
            shutil.copy(work / "good.mid", out)
            good = out.read_bytes()
        cmd = [sys.executable, "-m", "musebridge", "generate", "--prompt", str(path), "--bars", "1", "--seed", str(i),
               "--out", str(out), *model]
        rc, _, err, rss, s = run_bounded(cmd, args.timeout, env)
        ok = judge(gens, rc, err, rss, s, args.rss_mb, path.name)
        left = sorted(p.name for p in out_dir.iterdir() if p.name != "clip.mid")
        broken = bool(left)
        if rc == 0:
            rc2, _, _, _, _ = run_bounded([sys.executable, "-c", READ_SNIPPET, str(out)], args.timeout, env)
            broken = broken or rc2 != 0
        elif good is not None:
            broken = broken or not out.exists() or out.read_bytes() != good
        else:
            broken = broken or out.exists()
        if broken:
            gens.bad_outputs += 1
            if len(gens.examples) < 20:
                gens.examples.append(f"{path.name}: output left {left or 'a changed/partial clip.mid'}")
        if (broken or (rc != 2 and not ok)) and args.keep and path.is_file():
            shutil.copy(path, args.keep)

    from musebridge.engine.music.events import Note, Piece
    from musebridge.engine.music.midi_file import write_midi

    write_midi(Piece(notes=[Note(i * 0.5, 0.5, 60 + i, 90, "piano") for i in range(8)]), work / "good.mid")
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    # warm the model's graph cache once, so the first generate cases do not time out building it
    run_bounded([sys.executable, "-m", "musebridge", "generate", "--bars", "1", "--out", str(work / "warm.mid"), *model],
                600, env)
    gen_paths = paths[: args.generate] + specials
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(read, paths + specials))
        list(pool.map(generate, range(len(gen_paths)), gen_paths))
    print(reads.line("read_midi"))
    print(gens.line("generate"))
    for ex in reads.examples + gens.examples:
        print("  " + ex)
    failed = sum(getattr(t, k) for t in (reads, gens)
                 for k in ("tracebacks", "hangs", "unexpected", "bad_outputs", "over_rss"))
    print(f"{time.monotonic() - t0:.0f} s in all" + (f"; cases in {work}" if failed else ""))
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
