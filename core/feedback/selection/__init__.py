"""Retraining on a selection (seed 003): the selected-examples annotation and its loss
(``loss``) and the retrain-on-selection workflow without UI (``workflow``)."""
