"""What the two converters' command lines share: the class-name and Hub flags, the checkpoint-file check and the
closing report (and upload)."""

import argparse
from pathlib import Path

from tokenset_diffusers.utils.hub import push_folder_to_hub


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """`--id2label` and `--push_to_hub`, with the same meaning in both converters."""
    parser.add_argument(
        "--id2label",
        default="hub",
        help="class names: a JSON file, 'hub' (ImageNet's from huggingface/label-files) or 'none'",
    )
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the result to this Hub repo")


def check_checkpoint_files(parser: argparse.ArgumentParser, *paths: str | None) -> None:
    """Stops with the parser's usage error when a given checkpoint path is not a file (`None` = not given)."""
    for path in paths:
        if path is not None and not Path(path).is_file():
            parser.error(f"no such checkpoint file: {path}")


def report_and_push(folder: Path, repo_id: str | None, system: str) -> None:
    """Prints where the converted pipeline was written and, with `repo_id`, uploads the folder as written (model card
    included)."""
    print(f"wrote {folder}")
    if repo_id:
        push_folder_to_hub(folder, repo_id, commit_message=f"Convert {system}")
        print(f"pushed to https://huggingface.co/{repo_id}")
