"""MuseBridge: a realtime MIDI co-composer that sits beside your DAW."""

__version__ = "0.1.0"
