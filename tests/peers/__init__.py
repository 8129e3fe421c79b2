"""Stand-ins for the peers a dbsync site meets: systems other than dbsync itself."""
