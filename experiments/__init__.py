"""The study harness: the paper's tasks, data, metrics, training, evaluation and launch (imports bertgen, never the reverse)."""
