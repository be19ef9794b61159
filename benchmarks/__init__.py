"""Scripts of tokenset-diffusers (benchmarks/); run them by path, e.g. `python benchmarks/<script>.py --help`."""
