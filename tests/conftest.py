"""Test-session setup: 8 simulated CPU devices, so mesh tests run on any laptop.

The flag must be set before JAX initializes its backend, hence here, at import time. Tests that
want one device build their mesh from `jax.devices()[:1]`.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
