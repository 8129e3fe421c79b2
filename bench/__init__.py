"""dbsync's benchmark: bulk pulls against `pg_dump | psql`, and control-plane latency.

Run it with ``.venv/bin/python -m bench.run`` (see ``bench/run.py``); it is not
part of the test suite, only a tiny smoke run of it is.
"""
