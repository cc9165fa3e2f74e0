"""`python -m llmq.cli` is the `llmq` command."""

from llmq.cli.main import main

main()
