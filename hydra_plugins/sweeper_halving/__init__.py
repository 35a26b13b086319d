"""Successive halving over the grid sweeper's configurations, by pausing and resuming runs; see halving.py."""
