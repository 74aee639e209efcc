"""ftc: a compiler for fine-tuning."""

__version__ = "0.1.0"
