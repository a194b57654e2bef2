"""osediff: OSEDiff one-step diffusion super-resolution (Wu et al., NeurIPS 2024)."""

__version__ = "0.1.0"

__all__ = ["ModelOptions", "OSEDiffPipeline", "OSEDiffWeights", "__version__", "load_upscaler"]


def __getattr__(name: str):
    # keep ``import osediff`` light: torch/diffusers load only when the pipeline is used
    if name == "OSEDiffPipeline":
        from .pipeline import OSEDiffPipeline

        return OSEDiffPipeline
    if name == "OSEDiffWeights":
        from .checkpoint.weights import OSEDiffWeights

        return OSEDiffWeights
    if name == "load_upscaler":
        from .loading import load_upscaler

        return load_upscaler
    if name == "ModelOptions":
        from .model_files import ModelOptions

        return ModelOptions
    raise AttributeError(name)
