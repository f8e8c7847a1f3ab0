"""Encoders and the task models built on them (see `heads.py`); `config.py` holds their config."""
