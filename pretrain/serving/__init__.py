"""Serving a fine-tuned model: a `jax.export` artifact and an HTTP server with dynamic batching.

`inputs.py` (request items ─► the task's prediction input), `predictor.py` (buckets, the exported
functions, the task's own post-processing), `artifact.py` (export, manifest, load), `batcher.py`
(the asyncio dynamic batcher), `protocol.py` (request parsing), `app.py` (the ASGI app, metrics).
`docs/serving.md` describes the whole.
"""
