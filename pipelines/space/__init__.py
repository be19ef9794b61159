"""The demo (pipelines/space/): run `python pipelines/space/app.py`; `build_space.py` writes the folder to upload."""
