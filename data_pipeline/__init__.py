"""Text to BERT pretraining batches, in numpy (no JAX): tokenizer, documents, NSP instances,
dynamic masking and the step-indexed loaders. See docs/architecture.md for the data flow."""
