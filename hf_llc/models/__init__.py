"""Validation architectures shipped with hf_llc."""
