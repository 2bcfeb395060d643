"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class MuseBridgeError(Exception):
    """Base class: the message names the thing and says what to do."""


class VocabError(MuseBridgeError):
    """A vocabulary file or config that cannot be used."""


class MidiFileError(MuseBridgeError):
    """A MIDI file that cannot be read or written."""


class DataError(MuseBridgeError):
    """A dataset folder, source or manifest that cannot be used."""
