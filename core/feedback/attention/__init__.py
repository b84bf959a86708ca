"""Attention clicking (seed 001): the annotation and the attention loss (``loss``) and the
workflow without UI: sampling, clicks to annotations, fine-tune, the simulated user (``workflow``)."""
