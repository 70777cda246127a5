"""bench stage of bertforge (see README)."""
