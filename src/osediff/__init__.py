"""osediff: OSEDiff one-step diffusion super-resolution (Wu et al., NeurIPS 2024)."""

__version__ = "0.1.0"

__all__ = ["OSEDiffPipeline", "OSEDiffWeights", "__version__"]


def __getattr__(name: str):
    # keep ``import osediff`` light: torch/diffusers load only when the pipeline is used
    if name == "OSEDiffPipeline":
        from .pipeline import OSEDiffPipeline

        return OSEDiffPipeline
    if name == "OSEDiffWeights":
        from .checkpoint.weights import OSEDiffWeights

        return OSEDiffWeights
    raise AttributeError(name)
