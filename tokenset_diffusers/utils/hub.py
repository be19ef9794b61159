"""The one place that uploads to the Hub: pipelines' `push_to_hub`, the training scripts' `--push_to_hub` and the
conversion scripts' `--push_to_hub` all call [`push_folder_to_hub`]."""

import os


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str,
    private: bool | None = None,
    token: str | None = None,
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
):
    """Creates the model repository `repo_id` if needed and uploads `folder` to it.

    Args:
        folder (`str` or `os.PathLike`): a saved folder (pipeline, component or training output).
        repo_id (`str`): `namespace/name` of the Hub model repository.
        commit_message (`str`): the commit's message.
        private (`bool`, *optional*): the visibility of a repository created here (an existing one keeps its own).
        token (`str`, *optional*): a Hub token; the cached login by default.
        create_pr (`bool`, defaults to `False`): open a pull request instead of committing to the main branch.
        ignore_patterns (`list[str]`, *optional*): files not to upload (e.g. checkpoints and logs of a training run).

    Returns:
        The `huggingface_hub.CommitInfo` of the upload (its `.repo_url.repo_id` is the repository's full id).
    """
    from huggingface_hub import HfApi

    if not os.path.isdir(folder):
        raise ValueError(f"`folder` must be an existing folder to upload, got {os.fspath(folder)!r}.")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=os.fspath(folder),
        commit_message=commit_message,
        create_pr=create_pr,
        ignore_patterns=ignore_patterns,
    )
