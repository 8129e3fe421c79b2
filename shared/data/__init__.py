"""The data plane: the row codec, table description and keyset SQL both sides share."""
