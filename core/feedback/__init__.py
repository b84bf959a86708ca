"""Feedback kinds: each is the annotations a person makes plus a loss term the engine adds
to the classification loss during a fine-tune (``term(model, batch) -> scalar``)."""
