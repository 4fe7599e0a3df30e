"""Public home of the readers and writers: ``hyperseg.io`` re-exports :mod:`hyperseg.data.io`.

See :mod:`hyperseg.data.io` for the formats and axis conventions.
"""
from .data.io import (
    NAN_POLICIES,
    OUTPUT_SUFFIXES,
    SUFFIXES,
    Case,
    Volume,
    VolumeError,
    case_name,
    check_array,
    find_cases,
    find_volumes,
    output_suffix,
    read_case,
    read_labels,
    read_volume,
    volume_suffix,
    write_label_map,
)

__all__ = ["NAN_POLICIES", "OUTPUT_SUFFIXES", "SUFFIXES", "Case", "Volume", "VolumeError", "case_name",
           "check_array", "find_cases", "find_volumes", "output_suffix", "read_case", "read_labels",
           "read_volume", "volume_suffix", "write_label_map"]
