"""steerboard core library: datasets, models, training engine, feedback kinds, workbench.

Nothing in this package imports Streamlit; it is usable from scripts, notebooks and tests.
"""
