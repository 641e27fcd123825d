"""Reports from finished runs: the paper's published numbers, table rows, plots (see :mod:`tor_exp.report`)."""
from tor_exp.reporting.collect import ReportRow, collect_rows, load_sweep, paper_columns, task_column
from tor_exp.reporting.paper import find_paper_row, load_paper_results

__all__ = ["ReportRow", "collect_rows", "find_paper_row", "load_paper_results", "load_sweep", "paper_columns",
           "task_column"]
