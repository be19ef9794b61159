"""The paper's tokenizer analyses (pipelines/analyses/); run them by path, e.g.
`python pipelines/analyses/token_order.py --help`."""
