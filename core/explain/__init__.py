"""What the model looks at: differentiable batched Grad-CAM (gradcam.py) and superpixels
(superpixels.py), and (for display) saliency methods."""
from core.explain.gradcam import CamResult, gradcam, gradcam_batches, layer_of, normalize_cams

__all__ = ["CamResult", "gradcam", "gradcam_batches", "layer_of", "normalize_cams"]
