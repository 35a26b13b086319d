"""A local launcher of long-lived worker processes with device slots; see launcher.py."""
