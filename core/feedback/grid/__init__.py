"""Grid feedback (seed 002): the marked-squares annotation and the input-gradient penalty
(``loss``), the review-at-each-epoch-end run inside a workbench job (``job``) and the
workflow without UI with the simulated user (``workflow``)."""
