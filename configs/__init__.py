"""Experiment configs: `get_config(arg)` per file (`--config=FILE.py:ARG`)."""
