"""MuseBridge: a realtime MIDI co-composer that sits beside your DAW.

The package root holds what every layer shares: `errors` (one-line, actionable errors) and
`files` (reading and writing user files safely). The command lives in `musebridge.cli`.
"""

__version__ = "0.1.0"
