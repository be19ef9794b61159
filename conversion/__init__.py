"""Scripts of tokenset-diffusers (conversion/); run them by path, e.g. `python conversion/<script>.py --help`."""
