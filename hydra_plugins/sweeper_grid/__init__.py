"""Hydra's basic sweeper that composes each job once and checks the whole grid first; see grid.py."""
