"""Latent editing (seed 000): the move annotation and its loss (``loss``), the fixed 2D
projection branch (``projection``) and the workflow without UI (``workflow``)."""
