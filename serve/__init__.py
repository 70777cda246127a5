"""serve stage of bertforge (see README)."""
