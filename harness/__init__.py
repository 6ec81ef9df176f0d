"""pgolf: check, run and rerun Parameter Golf submissions."""

__version__ = "0.1.0"
