"""User studies: the design and its statistics (``design``), the study tables and their
schema (``store``, ``schema``), a participant's path through the conditions (``flow``), one
condition's task per feedback kind (``condition``, ``attention``, ``latent``, ``grid``) and
the results export (``results``)."""
