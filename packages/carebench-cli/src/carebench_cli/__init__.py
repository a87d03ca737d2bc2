"""The carebench command line: the only place where data, models and eval meet."""

__version__ = "0.1.0"
