"""The sender's side of the data plane: pages, COPY out, preview, checksums, data endpoints."""
