"""The engine: from an op's spec to one record per cell.

    spec, catalogue   the op specs (`catalogue.load()`: every op, by name)
    strategies        Hypothesis strategies: shapes at a breadth, values in a regime
    target            the thing under test, and the forward each oracle differentiates for it
    evaluate          one case against every side -> a Verdict per side (verdict: its fields and words)
    compare, tolerances, patterns, subgradient, blame, devices   what evaluate and the search use
    runner            the search of one target over its cells (groups), and the records it writes
    config, session   what a run is asked to do, and one run: jobs in, records and run metadata out

docs/architecture.md draws the whole data path. Importing this package imports none of its modules.
"""
__all__: list[str] = []
