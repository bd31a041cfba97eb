"""Measuring models: parameters, multiply-accumulates, memory; experiments and the evidence report."""
