"""What a job runs: training, evaluation, the one decode-and-score recipe, the model builder, the optimiser, checkpoints."""
