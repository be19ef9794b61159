"""Scripts of tokenset-diffusers (pipelines/); run them by path, e.g. `python pipelines/<script>.py --help`."""
