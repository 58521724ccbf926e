"""daram: offline-logit knowledge distillation for Korean GPT models."""

__version__ = "0.1.0"
