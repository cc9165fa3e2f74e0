"""Wire formats of the OpenAI Batch and Anthropic Message Batches APIs, mapped onto llmq's own
batches and chat jobs. Pure functions: no HTTP, no SQL (see llmq/api/routes/compat_*.py)."""
