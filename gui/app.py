"""Open the window: QApplication, theme, saved settings, the session host.

`run()` is what `musebridge gui` (and bare `musebridge`) calls. With `screenshot`, it
loads the demo jam into a portless session, renders the window to a PNG and returns,
never touching the user's saved settings or MIDI map.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from musebridge.errors import MuseBridgeError


def has_display() -> bool:
    """Whether Qt can open a window here (Linux needs X11 or Wayland unless offscreen)."""
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]
    if platform in ("offscreen", "minimal", "vnc"):
        return False  # renders, but nobody would see a window
    if platform:
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def make_app():
    """The QApplication (one per process), dark and DPI-aware."""
    try:
        from PyQt6.QtCore import Qt
        from PyQt6.QtGui import QGuiApplication
        from PyQt6.QtWidgets import QApplication
    except ImportError:
        raise MuseBridgeError("the app needs PyQt6: pip install 'musebridge[app]' (or run the headless bridge: "
                              "musebridge jam)") from None
    from . import theme

    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication(sys.argv[:1])
        app.setApplicationName("MuseBridge")
        app.setOrganizationName("MuseBridge")
        app.setApplicationDisplayName("MuseBridge")
        theme.apply(app)
    return app


def build_window(model: str | None = None, backend: str = "auto", settings_path: str | None = None,
                 ports: bool = True, refresh_ms: int = 2000, port_lister=None):
    """(app, window): the main window over a session built from saved settings."""
    app = make_app()
    from musebridge.bridge.cc_map import CCMap

    from . import settings as saved
    from .host import SessionHost
    from .window import MainWindow

    qs = saved.open_settings(settings_path)
    values = saved.load(qs)
    cfg = saved.to_config(values, model, backend)
    problem = ""
    if ports:
        try:
            ccmap = CCMap()
        except MuseBridgeError as e:  # a damaged MIDI map must not keep the app from opening
            ccmap, problem = CCMap(load=False), str(e)
    else:
        ccmap = CCMap(path=Path(tempfile.gettempdir()) / "musebridge-demo-midi_map.json", load=False)
    host = SessionHost(cfg, ports=ports, ccmap=ccmap)
    win = MainWindow(host, qs, values, port_lister=port_lister, refresh_ms=refresh_ms)
    if problem:
        win.show_error(problem)
    return app, win


def screenshot(path: str | Path, model: str | None = None, backend: str = "auto", size=(1440, 880)) -> Path:
    """Render the window with the demo jam to a PNG."""
    from .demo import load_demo

    with tempfile.TemporaryDirectory(prefix="musebridge-shot-") as tmp:
        app, win = build_window(model, backend, settings_path=str(Path(tmp) / "settings.ini"), ports=False,
                                refresh_ms=0, port_lister=lambda api: ([], []))
        win.resize(*size)
        win.show()
        app.processEvents()
        load_demo(win)
        for _ in range(3):
            app.processEvents()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not win.grab().save(str(path), "PNG"):
            raise MuseBridgeError(f"cannot write {path}; choose a writable folder")
        win.close()
        app.processEvents()
    return path


def run(model: str | None = None, backend: str = "auto", settings_path: str | None = None, demo: bool = False) -> int:
    """Open the app and run until the window closes."""
    if demo and settings_path is None:  # the demo's faders and style are not the user's settings
        settings_path = str(Path(tempfile.mkdtemp(prefix="musebridge-demo-")) / "settings.ini")
    app, win = build_window(model, backend, settings_path, ports=not demo, refresh_ms=0 if demo else 2000,
                            port_lister=(lambda api: ([], [])) if demo else None)
    win.show()
    if demo:
        from .demo import load_demo

        load_demo(win)
    return app.exec()
