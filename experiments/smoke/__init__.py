"""Tiny checkpoints and tasks made here for the smoke grid (assets: light; pretrain: the heavy part)."""
