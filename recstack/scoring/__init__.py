"""Scoring a model: exact metrics, and evaluation of a model on a dataset's rows. Below train and
serve, which both evaluate."""
