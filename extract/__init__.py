"""Stage one: run a frozen LLM once over a dataset and store its hidden states."""
