"""Domain core of dbsync: settings, storage, security, wire format and services.

Nothing here imports Falcon or Celery, so the web front and the workers share it.
"""
