"""hf_llc: Local Learning Coefficient estimation for Hugging Face models."""
