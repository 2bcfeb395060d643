"""The music representation: instrument families, events in beats, the vocabulary, the
tokenizer, MIDI files, the model's extra features and the measures on notes. numpy and mido
only (no torch)."""
