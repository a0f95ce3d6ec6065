"""Each family's forward, written as the transformers code computes it, on the replay's symbolic tensors."""
