"""Which MIDI system, and opening clients on it (python-rtmidi).

`resolve_api`: ALSA on Linux when the sequencer exists, else JACK when a server answers;
CoreMIDI on macOS; Windows MM on Windows, where virtual ports do not exist (use loopMIDI
and pass its port name). `MUSEBRIDGE_MIDI_API` overrides `auto`. `open_client` makes an
rtmidi client or says in one line what to start or install.

JACK specifics live here too: run the server synchronous (`jackd -S ...`, as `JackServer`
does): in the default asynchronous mode a busy machine loses or duplicates events between
clients (measured on 2 loaded cores, 2,000 notes 0.5 ms apart: 38 wrong with a callback on
JACK's thread, 75 when polling; with `-S`: none). A server that dies under our clients is
noticed from outside libjack (`jack_server_id`), and its clients are abandoned, never closed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import sys
import time

import rtmidi

from musebridge.errors import MuseBridgeError

ENV_API = "MUSEBRIDGE_MIDI_API"
CLIENT_NAME = "MuseBridge"
ALSA_SEQ = "/dev/snd/seq"

APIS: dict[str, int] = {
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "windows": rtmidi.API_WINDOWS_MM,
}
API_CHOICES = ("auto", *APIS)
_API_NAMES = {v: k for k, v in APIS.items()}


def api_name(api: int) -> str:
    """'alsa', 'jack', ... for an rtmidi API constant."""
    return _API_NAMES.get(api, f"api {api}")


def resolve_api(name: str | int = "auto") -> int:
    """The rtmidi API constant for auto|alsa|jack|coremidi|windows.

    auto: $MUSEBRIDGE_MIDI_API if set; on Linux ALSA if its sequencer exists, else JACK if
    a server answers, else ALSA (opening a port then says what is missing); on macOS
    CoreMIDI, on Windows Windows MM.
    """
    if isinstance(name, int):
        if name not in _API_NAMES:
            raise MuseBridgeError(f"MIDI API {name} is unknown: use one of {', '.join(API_CHOICES)}")
        return name
    key = name.strip().lower()
    if key == "auto":
        env = os.environ.get(ENV_API, "").strip()
        if env and env.lower() != "auto":
            if env.lower() not in APIS:
                raise MuseBridgeError(f"{ENV_API}={env!r} is not a MIDI API: use one of {', '.join(API_CHOICES)}")
            return _compiled(env.lower())
        return _auto_api()
    if key not in APIS:
        raise MuseBridgeError(f"MIDI API {name!r} is unknown: use one of {', '.join(API_CHOICES)}")
    return _compiled(key)


def _compiled(key: str) -> int:
    api = APIS[key]
    have = rtmidi.get_compiled_api()
    if api not in have:
        raise MuseBridgeError(f"MIDI API {key} is not available on this system; "
                              f"this python-rtmidi has: {', '.join(api_name(a) for a in have) or 'none'}")
    return api


def _auto_api() -> int:
    have = rtmidi.get_compiled_api()
    if sys.platform.startswith("linux"):
        if rtmidi.API_LINUX_ALSA in have and os.path.exists(ALSA_SEQ):
            return rtmidi.API_LINUX_ALSA
        if rtmidi.API_UNIX_JACK in have and jack_running():
            return rtmidi.API_UNIX_JACK
        return rtmidi.API_LINUX_ALSA
    if sys.platform == "darwin":
        return rtmidi.API_MACOSX_CORE
    if sys.platform == "win32":
        return rtmidi.API_WINDOWS_MM
    return have[0] if have else rtmidi.API_UNSPECIFIED


def jack_running() -> bool:
    """True if the environment's JACK server answers (never starts one)."""
    from .jack_server import server_answers

    if server_answers(None, timeout_s=5.0):  # a busy server can take seconds to answer
        return True
    if shutil.which("jack_lsp") is not None:
        return False
    try:  # no jack_lsp: ask through rtmidi (libjack may print a line if there is no server)
        probe = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=f"{CLIENT_NAME} probe")
    except rtmidi.RtMidiError:
        return False
    probe.delete()
    return True


JACK_OPEN_RETRIES_S = (0.1, 0.3, 0.6, 1.0, 2.0, 3.0)  # a busy server can stall new clients for seconds
JACK_SETTLE_S = 0.03  # a couple of JACK cycles, even at 1024 frames


def open_client(cls: type, api: int, client_name: str):
    """An rtmidi MidiIn/MidiOut, or a one-line error saying what to start or install.

    A JACK server that is up can still refuse a new client for a moment ("Cannot open
    client": measured under CPU contention, while other clients come and go): that is
    retried a few times before giving up.
    """
    if api == rtmidi.API_LINUX_ALSA and sys.platform.startswith("linux") and not os.path.exists(ALSA_SEQ):
        raise _no_alsa()  # before ALSA's own library prints its complaint on stderr
    for delay in (*JACK_OPEN_RETRIES_S, None):
        try:
            return cls(api, name=client_name)
        except rtmidi.RtMidiError as e:
            error = e
            if api != rtmidi.API_UNIX_JACK or delay is None or not jack_running():
                break
            time.sleep(delay)
    if api == rtmidi.API_UNIX_JACK:
        server = os.environ.get("JACK_DEFAULT_SERVER")
        which = f"JACK server {server!r}" if server else "JACK server"
        if jack_running():
            raise MuseBridgeError(f"the {which} refused a new client (overloaded?): close some JACK clients "
                                  "or try again") from error
        raise MuseBridgeError(f"no {which} is running: start one (e.g. `jackd -S -d dummy`, or QjackCtl) "
                              f"or choose another --api") from error
    if api == rtmidi.API_LINUX_ALSA:
        raise _no_alsa() from error
    raise MuseBridgeError(f"cannot open MIDI ({api_name(api)}): {str(error).splitlines()[0]}") from error


def _no_alsa() -> MuseBridgeError:
    return MuseBridgeError(f"cannot open the ALSA sequencer ({ALSA_SEQ} missing?): load it with "
                           f"`modprobe snd-seq`, or start a JACK server and use --api jack")


# --- a JACK server that dies under us ------------------------------------------------------------
#
# Measured with python-rtmidi 1.5.8 and jackd2 1.9.21, server killed (-9 or TERM): our
# clients notice nothing (no error callback, is_port_open() stays True, get_ports() returns
# the old list, sends vanish), and closing or deleting such a client once this process
# has opened any new JACK client segfaults. So the server is watched from outside libjack
# (`jack_server_id`), and a client of a dead server is never closed: it is abandoned
# (`abandon`) and a new one made when the server is back.


def jack_server_id(name: str | None = None) -> tuple[int, int] | None:
    """Which JACK server instance (`name`, else the environment's) answers now, or None.

    Cheap enough to ask twice a second: a stat and a connect on the server's socket in
    /dev/shm, no JACK client. A server that was killed leaves the socket file (connect is
    refused); one restarted under the same name has a new file, so a different id."""
    name = name or os.environ.get("JACK_DEFAULT_SERVER") or "default"
    path = f"/dev/shm/jack_{name}_{os.getuid()}_0"
    try:
        st = os.stat(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            sock.connect(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


_abandoned: list = []  # clients of dead servers: kept alive so that nothing ever frees them


def abandon(rt) -> None:
    """Let go of an rtmidi client whose JACK server died, without closing it (that can
    segfault, see above). An extra reference keeps it from ever being freed, even at exit."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(rt))
    _abandoned.append(rt)
