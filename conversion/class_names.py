"""Class names for converted pipelines (TokenSet and TokenBridge): a JSON file, or ImageNet's from the Hub."""

import json
from pathlib import Path


IMAGENET_LABELS_REPO = "huggingface/label-files"
IMAGENET_LABELS_FILE = "imagenet-1k-id2label.json"


def load_id2label(source: str | None, num_classes: int) -> dict[int, str] | None:
    """Class names from a JSON file (`{"0": "tench, Tinca tinca", ...}`), or, for `"hub"`, ImageNet's from the Hub
    dataset `huggingface/label-files` (1,000 classes only); `None` or `"none"` gives no names."""
    if source is None or source == "none":
        return None
    if source == "hub":
        if num_classes != 1000:
            return None
        from huggingface_hub import hf_hub_download

        source = hf_hub_download(IMAGENET_LABELS_REPO, IMAGENET_LABELS_FILE, repo_type="dataset")
    id2label = {int(key): value for key, value in json.loads(Path(source).read_text()).items()}
    if len(id2label) != num_classes:
        raise ValueError(f"{source} names {len(id2label)} classes, but the generator has {num_classes}.")
    return id2label
