"""The CUDA sources of the CuPy backend (*.cu beside this file), and the kernels it
loads from each. Every kernel has a NumPy twin in geeps.backend.numpy_backend.

host.h, beside them, compiles the same sources for the CPU (geeps.backend.hostcuda).
"""
from importlib import resources

KERNELS = {
    "rows.cu": ("gather_rows", "scatter_rows", "scatter_add_rows", "move_rows"),
    "rules.cu": ("sgd_update", "momentum_update", "adam_update"),
}


def source(filename: str) -> str:
    """The text of one CUDA source of this package."""
    return resources.files(__name__).joinpath(filename).read_text()
