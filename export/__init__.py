"""export stage of bertforge (see README)."""
