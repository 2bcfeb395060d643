"""The realtime bridge: virtual MIDI ports, clock sync, phrase capture, scheduling, note safety (issue 5)."""
