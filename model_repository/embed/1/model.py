"""Triton python-backend entry point, written by `bertforge.served_model.ServedModelDir.write`.

Do not edit: the logic lives in the installed `bertforge` package (`serve/backend.py`), which the
python backend stub imports from the environment that launched `tritonserver`.
"""

import triton_python_backend_utils as pb_utils

from serve.backend import ServedModel


class TritonPythonModel:
    def initialize(self, args):
        self.model = ServedModel.from_triton_args(args, pb_utils)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.close()
