"""ernie-cl: ERNIE-2.0-style continual sequential multi-task pre-training of text encoders."""

__version__ = "0.1.0"
