"""Experiments on top of the pipeline: the grid every experiment runs on, the vector controls, the
comparison `contrans compare` runs, and the tables and plots it writes."""
