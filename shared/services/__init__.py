"""Domain services: connection lifecycle, peer notices, verification, audit."""
