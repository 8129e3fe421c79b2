"""Falcon resources, one module per group of endpoints."""
