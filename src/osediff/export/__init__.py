"""Exported runtimes: the one-step model as ONNX graphs (``onnx.py``, ``osediff export``) and a model
that runs them under the per-image step (``runtime.py``: ``Upscaler(OnnxOneStepModel(folder))``).
Needs the ``export`` extra (onnx, onnxruntime)."""
