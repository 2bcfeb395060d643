"""A private JACK server for the tests that need real MIDI ports (imported by conftest).

One server per test process: its name carries the xdist worker and the pid, so parallel
workers and concurrent CI runs on one machine never share (or kill) each other's server.
The session's environment points every JACK client -- rtmidi ports in this process and
subprocesses such as jack_midi_dump -- at it, and makes `--api auto` choose JACK.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from musebridge.bridge.jack_server import JackServer

JACK_VARS = {"JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER", "MUSEBRIDGE_MIDI_API"}


@pytest.fixture(scope="session")
def jack_server() -> Iterator[JackServer]:
    """A running `jackd -S -d dummy`; skips (with the install command) if jackd is missing."""
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed (Debian: apt-get install jackd2; .ci/run installs it)")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    server = JackServer(f"mbtest_{worker}_{os.getpid()}")
    saved = {k: os.environ.get(k) for k in JACK_VARS}
    server.start()
    os.environ.update(server.env)
    os.environ["MUSEBRIDGE_MIDI_API"] = "jack"
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
