"""Harnesses that run many fine-tuning jobs from one checkpoint: GLUE."""
