"""Training stage: the lecture's models, the datasets and the training loop (needs torch)."""
