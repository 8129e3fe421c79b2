"""The ``dbsync`` operator command."""
