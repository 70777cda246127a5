"""The entry point that the `1/model.py` of embed_sparse models exported up to commit 7e50431 imports
(`from serve.sparse_backend import SparseServedModel`), kept so those repositories still serve: it is the one
backend, which runs the task the model's serving.json names. New exports import serve.backend.ServedModel."""

from serve.backend import ServedModel as SparseServedModel

__all__ = ["SparseServedModel"]
