"""ONNX and TensorRT builders for the LatentSync networks (specs drive export, build and runtime)."""
