"""A stand-in for a PhoenixKit site running its Sync module, both as sender and receiver.

It behaves as /work/shared/reference/phoenixkit-sync-facts.md says PhoenixKit
does (each behaviour cites its section there), quirks included, so that dbsync
can be tested against the system it claims to pair with:

- ``server``: every endpoint under ``{prefix}/sync/api/`` (default prefix
  ``/phoenix_kit``) with PhoenixKit's statuses and bodies: register-connection
  by incoming mode (``require_approval`` makes an *active* connection),
  one-shot unordered pull-data with no ``has_more``, table-records capped at
  100 and ordered by the first key column, table-schema without a primary
  key, its md5 checksum, its value encoding, no rate limit.
- ``client``: the admin pages and the outbound client: register on create,
  tell the remote of status changes and deletes (never retrying), the
  Connections page's self-healing checks, the Sync view's "differs" marker,
  and pulls through its two HTTP import paths (``importer``), with
  ``Prepare.value/3`` decoding and Postgrex's strict binding (``values``).
- ``db``: its state (connections, transfers, settings) in PhoenixKit's own
  tables of its PostgreSQL database, beside the data it offers.

Run it: ``python -m tests.peers.phoenixkit --database-url URL init ...``, then
``... serve --port P``; drive it with the other commands (``--help``), or from
a test with ``process.PhoenixKitProcess`` or in-process with
``server.ServerThread`` and ``client.PhoenixKit``.

Test switch (not PhoenixKit): config ``drop_every`` = N leaves out every Nth
row of each pull-data and table-records answer.
"""
