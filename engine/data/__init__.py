"""Training data: the sources (MIDI folders, the music21 corpus, POP909 arranged for a band),
the data build into token shards, the dataset over them, batches and augmentation."""
