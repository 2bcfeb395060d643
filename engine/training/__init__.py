"""The model and its training: the transformer, model files, training, held-out evaluation,
the baselines and the critic."""
