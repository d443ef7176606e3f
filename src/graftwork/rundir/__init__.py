"""The run directory, the one place its files are defined, written and read (torch-free):

- :mod:`.files` — file names, columns, atomic writers, JSON and formula-safe CSV
- :mod:`.config` — ``config.json`` validation and integrity seals
- :mod:`.reader` — a run's files as one ``Run`` record (``read_run``), for reports and listings
- :mod:`.outdir` — the writer's lock and the ``graft train --out`` policy
- :mod:`.staging` — replacing a run: built beside the old one, swapped in once complete
"""
from __future__ import annotations

from graftwork.errors import RunBusyError, RunConfigError, RunExistsError, RunModifiedError
from graftwork.rundir.config import (check_integrity, config_digest, file_sha256, load_config,
                                     load_sealed, seal, validate_config, write_config)
from graftwork.rundir.files import (CHECKPOINTS_DIR, CONFIG_FILE, FORMAT_VERSION,
                                    HISTORY_COLUMNS, HISTORY_FILE, LOCK_FILE, METRICS_FILE,
                                    MODEL_FILE, PLOTS_DIR, PREDICTION_COLUMNS, PREDICTIONS_FILE,
                                    REPORT_FILE, RUN_FILES, SKIPPED_COLUMNS, SKIPPED_FILE,
                                    STAGING_DIR, SUMMARY_FILE, atomic_file, atomic_write_text, csv_safe,
                                    package_versions, read_csv, read_json, read_metrics,
                                    write_csv, write_json)
from graftwork.rundir.outdir import RunLock, check_out_place, prepare_out
from graftwork.rundir.staging import commit

__all__ = [
    "MODEL_FILE", "CONFIG_FILE", "METRICS_FILE", "HISTORY_FILE", "PREDICTIONS_FILE",
    "SKIPPED_FILE", "SUMMARY_FILE", "REPORT_FILE", "PLOTS_DIR", "CHECKPOINTS_DIR", "LOCK_FILE",
    "STAGING_DIR", "RUN_FILES", "HISTORY_COLUMNS", "PREDICTION_COLUMNS", "SKIPPED_COLUMNS",
    "FORMAT_VERSION",
    "RunConfigError", "RunModifiedError", "RunBusyError", "RunExistsError",
    "atomic_file", "atomic_write_text", "write_json", "read_json", "write_csv", "read_csv",
    "csv_safe", "package_versions", "validate_config", "load_config", "config_digest",
    "file_sha256", "seal", "check_integrity", "write_config", "read_metrics", "RunLock",
    "prepare_out", "check_out_place", "commit", "load_sealed",
]
