"""Everything that reads or writes a file: scenario files, traces, calibration tables, results and figures."""
