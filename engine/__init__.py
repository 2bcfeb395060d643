"""MIDI <-> tokens, datasets, the model and its runtimes: everything between the bridge and the weights."""
