"""A study: its config expanded into runs (parsed by Snakemake, so nothing heavy is imported here), the
tables collected from the runs, the study-level fits and the held-out checks."""
