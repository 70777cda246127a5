"""`bertforge pipeline`: train then export in one command; above the stages, since it drives train and export."""
