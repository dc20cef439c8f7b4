"""The LLaMA engine: generation and perplexity over GGUF models with tensor x sequence parallelism."""

__all__: list = []
