"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class MuseBridgeError(Exception):
    """Base class: the message names the thing and says what to do."""


class VocabError(MuseBridgeError):
    """A vocabulary file or config that cannot be used."""


class MidiFileError(MuseBridgeError):
    """A MIDI file that cannot be read or written."""


class DataError(MuseBridgeError):
    """A dataset folder, source or manifest that cannot be used."""


class ModelFileError(MuseBridgeError):
    """A model folder that cannot be loaded."""


class ModelOutputError(ModelFileError):
    """A model whose output is not music (non-finite logits, degenerate tokens): its weights are damaged."""


class GraphFileError(MuseBridgeError):
    """An ONNX graph that cannot be built, written or loaded."""


class BackendError(MuseBridgeError):
    """A decoder backend that is unknown or not installed here, or that failed to run."""
