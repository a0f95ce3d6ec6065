"""A symbolic replay of one training step: what the real PyTorch step allocates, without torch.

The analytic layer's activation and peak model. Each model family's forward is written as the
`transformers` implementation computes it (same operators, same dtypes, same views and copies), on
symbolic tensors whose sizes are polynomials in batch, sequence and key lengths. A tiny engine mirrors
PyTorch's: an operator saves what its derivative formula needs (torch's `derivatives.yaml`), a storage
lives while something refers to it (CPython's reference counting stands for the tensors' own), and the
backward pass runs nodes in reverse creation order as torch's autograd engine does, allocating what each
derivative formula allocates. The result is the live bytes after forward and the candidate peaks of
forward and backward, checked against traced steps (`peftcalc validate`).
"""
