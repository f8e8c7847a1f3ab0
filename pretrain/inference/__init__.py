"""Running fine-tuned models: evaluation on labelled files and prediction on new text."""
