"""Explanations with Captum (Grad-CAM, Integrated Gradients, Saliency, Occlusion), the
weight-randomisation sanity check and the deletion-AUC faithfulness score."""

from .faithfulness import deletion_auc
from .methods import METHODS, ExplainConfig, ExplainError, canonical_method
from .sanity import SanityReport, cascading_randomization

__all__ = ["deletion_auc", "METHODS", "ExplainConfig", "ExplainError", "canonical_method",
           "SanityReport", "cascading_randomization"]
