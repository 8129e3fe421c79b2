"""The web front: Falcon answers the protocol's endpoints itself."""
