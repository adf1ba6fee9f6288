"""Stage 05 (notebook 05_summary): aggregates of a grid of runs, the claims and their statistics (p-values, Holm,
robustness), committed sets re-judged from their tables, memorisation, figures and Markdown tables.

Imports the top-level modules and every stage before it; nothing here runs a notebook.
"""
