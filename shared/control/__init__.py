"""The control plane: pairing and lifecycle of connections between sites."""
