"""Data-efficiency analysis: the reference scaling law, effective data, multipliers with seed-bootstrap
intervals, the paper's figures and a self-contained report (docs/analysis.md)."""

from replaylab.analysis.bootstrap import BootstrapCI, ReferenceBootstrap, bootstrap_multiplier
from replaylab.analysis.efficiency import (
    COMPARISONS,
    Analysis,
    Comparison,
    DataEfficiency,
    DomainResult,
    analyze_runs,
    data_efficiency,
)
from replaylab.analysis.law import (
    FORMS,
    AnalysisError,
    LawDiagnostics,
    NotInvertibleError,
    ReferenceLaw,
    fit_reference_law,
)
from replaylab.analysis.tables import load_csv_tables, load_sweep_table, select_cells

__all__ = [
    "FORMS",
    "COMPARISONS",
    "Analysis",
    "AnalysisError",
    "BootstrapCI",
    "Comparison",
    "DataEfficiency",
    "DomainResult",
    "LawDiagnostics",
    "NotInvertibleError",
    "ReferenceBootstrap",
    "ReferenceLaw",
    "analyze_runs",
    "bootstrap_multiplier",
    "data_efficiency",
    "fit_reference_law",
    "load_csv_tables",
    "load_sweep_table",
    "select_cells",
]
