"""The version, in a module of its own: importing it imports nothing else of recog."""

__version__ = "0.1.0"
