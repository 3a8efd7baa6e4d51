"""Custom GPU kernels, each with a plain PyTorch reference implementation."""
