"""The CUDA sources of the CuPy backend (*.cu beside this file), and the kernels it
loads from each. Every kernel has a NumPy twin in geeps.backend.numpy_backend."""

KERNELS = {
    "rows.cu": ("gather_rows", "scatter_rows", "scatter_add_rows", "move_rows"),
    "rules.cu": ("sgd_update", "momentum_update", "adam_update"),
}
