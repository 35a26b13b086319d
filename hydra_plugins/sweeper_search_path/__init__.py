"""A search path plugin: the --config-dir of a command, for the checks that compose its config before launch."""
