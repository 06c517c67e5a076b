"""diffice: diffusion-based iterative counterfactual explanations for fetal ultrasound quality."""

__version__ = "0.1.0"
