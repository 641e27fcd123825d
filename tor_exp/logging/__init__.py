"""Run records: results.json on disk first, W&B second (never the only copy)."""
from tor_exp.logging.config import LoggerConfig
from tor_exp.logging.results import config_hash, load_results, run_metadata, write_results

__all__ = ["LoggerConfig", "config_hash", "load_results", "run_metadata", "write_results"]
