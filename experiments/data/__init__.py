"""Task data and scores: sources, batches, metrics, archives, vocabularies."""
