"""The ``dbsync`` subcommands, one module per command group."""
