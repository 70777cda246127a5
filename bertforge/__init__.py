"""bertforge: pretrain BERT, export it to ONNX, serve it from Triton, benchmark it.

This package holds only the CLI dispatcher and what every stage shares
(config loading, the serving contract, paths). Stage code lives in the
top-level packages `train`, `export`, `serve` and `bench`.
"""

__version__ = "0.1.0"
