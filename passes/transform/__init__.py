"""Rewrites of the graph (analysis lives in ``passes.analysis``)."""
