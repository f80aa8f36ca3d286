"""Tasks: what both stages know about the data. Datasets and the built-in ``arith`` generator,
the prompt templates that turn an example into tokens and a loss mask, and the answer parsing
that evaluation scores with. Extraction and evaluation import these; nothing here runs a model."""
