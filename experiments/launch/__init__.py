"""The launch: a thin adapter over submitit and what it checks and plans before submitting."""
