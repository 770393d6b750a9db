"""mechtune: trace, then prescribe. Mechanistic diagnosis and targeted fine-tuning of
negation and paraphrase failures in medical vision-language models."""

__version__ = "0.1.0"

__all__ = ["__version__"]
