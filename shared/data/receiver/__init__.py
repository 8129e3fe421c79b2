"""The receiver's side of the data plane: transfers, the pull job, page sources, writers, checkpoints."""
