"""One module per vendor meter: Zeus (NVIDIA, AMD, RAPL, Apple), our own RAPL reader, macOS powermetrics."""
