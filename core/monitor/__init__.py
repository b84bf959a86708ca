"""Watching training: per-layer statistics and the settle cue (``stats``), the live probe and
freezing's saving (``live``), and the streamed embeddings of filters and activations with
their trails (``embed``)."""
