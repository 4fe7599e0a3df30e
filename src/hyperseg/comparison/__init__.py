"""``hyperseg bench``: the paper's tables on the synthetic benchmarks, every row measured here.

``baselines``: classical segmenters a user would try first; ``rows``: what each
table row runs; ``runner``: profiles, one fresh process per row, results.json and
table.md; ``table``: the paper's quoted numbers and the markdown table.
"""
