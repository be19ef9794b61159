"""The final outputs of a training run put into its output folder atomically: whoever loads the folder at any instant,
even after the run was killed in the middle of its final save, finds either the previous outputs whole or the new
ones whole, never a mixture or truncated weights ([`stage_final_outputs`], [`replace_output_folder`],
[`recover_output_folder`]).

The final pipeline of a run lives in `output_dir` itself, beside the run's checkpoints and logs, so no single rename
replaces it. Instead:

1. the new outputs are written to a staging folder beside `output_dir` (`.{name}.partial-final`, on the same file
   system);
2. a marker file in the staging folder records the names of the new outputs;
3. every other entry of `output_dir` (checkpoints, logs, files a previous pipeline had and the new one lacks) is
   renamed into the staging folder; `output_dir` keeps the previous outputs whole meanwhile;
4. the staging folder and `output_dir` are exchanged by one atomic `renameat2(RENAME_EXCHANGE)` (Linux); where the file
   system cannot exchange, by two renames, `output_dir` first renamed aside (`.{name}.partial-final-previous`);
5. the marker and the previous outputs (now in the staging folder) are deleted.

A run killed at any point leaves what [`recover_output_folder`] (called at the start of every run and of every final
save) puts back: before the exchange, the entries of step 3 go back to `output_dir` and the new outputs are deleted;
after it, the previous outputs are deleted.

Where `output_dir` cannot be exchanged (it is a mount point, its parent is read-only, or the working directory lies
inside it), the new entries are moved in one by one ([`move_into_place`]), with a warning.
"""

import ctypes
import errno
import json
import logging
import os
import shutil
from pathlib import Path


logger = logging.getLogger(__name__)

# The marker of a staging folder whose exchange with the output folder has not happened yet: the new entries' names.
NEW_OUTPUTS_MARKER = ".partial-final-new.json"
# The hidden folder inside `output_dir` that the fallback ([`move_into_place`]) stages the final outputs in.
PARTIAL_FINAL_NAME = ".partial-final"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def staging_folder(output_dir: str | os.PathLike) -> Path:
    """`{parent}/.{name}.partial-final`: where the final outputs of `output_dir` are written before the exchange."""
    output_dir = Path(output_dir).resolve()
    return output_dir.parent / f".{output_dir.name}.partial-final"


def previous_folder(output_dir: str | os.PathLike) -> Path:
    """`{parent}/.{name}.partial-final-previous`: `output_dir` renamed aside when the file system cannot exchange."""
    output_dir = Path(output_dir).resolve()
    return output_dir.parent / f".{output_dir.name}.partial-final-previous"


def can_exchange(output_dir: str | os.PathLike) -> bool:
    """Whether `output_dir` can be replaced by renames from its parent folder: it is on its parent's file system (not
    a mount point), the parent is writable, and the working directory is not inside it (which the exchange would move
    away)."""
    output_dir = Path(output_dir).resolve()
    if os.stat(output_dir).st_dev != os.stat(output_dir.parent).st_dev or not os.access(output_dir.parent, os.W_OK):
        return False
    cwd = Path.cwd().resolve()
    return cwd != output_dir and output_dir not in cwd.parents


def exchange_folders(first: Path, second: Path) -> bool:
    """Atomically exchanges two folders (`renameat2(..., RENAME_EXCHANGE)`); False where the platform or the file
    system cannot (nothing is changed then)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"Could not exchange {first} and {second}: {os.strerror(code)}")


def _write_json_atomically(path: Path, value) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def recover_output_folder(output_dir: str | os.PathLike) -> None:
    """Puts `output_dir` back in order after a run killed during its final save (see the module's docstring): the
    previous outputs whole, or the new ones whole, with every checkpoint and log in `output_dir`. Does nothing when no
    final save was interrupted. Main process only."""
    output_dir = Path(output_dir).resolve()
    staging, previous = staging_folder(output_dir), previous_folder(output_dir)
    if previous.is_dir() and not output_dir.exists():  # killed between the two renames of the fallback
        os.replace(previous, output_dir)
    if staging.is_dir():
        marker = staging / NEW_OUTPUTS_MARKER
        if marker.is_file():  # not exchanged yet: the run's own entries go back, the new outputs are dropped
            new_names = set(json.loads(marker.read_text()))
            for entry in staging.iterdir():
                if entry.name not in new_names and entry.name != NEW_OUTPUTS_MARKER:
                    os.replace(entry, output_dir / entry.name)
            logger.warning("A final save was interrupted; kept the previous outputs of %s.", output_dir)
        shutil.rmtree(staging)  # either the unfinished new outputs or, after the exchange, the previous ones
    if (output_dir / NEW_OUTPUTS_MARKER).exists():
        (output_dir / NEW_OUTPUTS_MARKER).unlink()
    if previous.exists():
        _remove(previous)
    for stale in output_dir.glob(f"{PARTIAL_FINAL_NAME}*"):  # left by the fallback or by earlier versions
        _remove(stale)


def stage_final_outputs(output_dir: str | os.PathLike) -> Path:
    """Recovers `output_dir` ([`recover_output_folder`]) and returns an empty folder to write the final outputs into,
    laid out as `output_dir` will hold them; then call [`replace_output_folder`]. Main process only."""
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    recover_output_folder(output_dir)
    staging = staging_folder(output_dir) if can_exchange(output_dir) else output_dir / PARTIAL_FINAL_NAME
    staging.mkdir()
    return staging


def replace_output_folder(staging: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Puts the entries of `staging` (from [`stage_final_outputs`]) into `output_dir`, replacing entries of the same
    name, keeping the others, atomically as a whole (see the module's docstring). Main process only."""
    staging, output_dir = Path(staging).resolve(), Path(output_dir).resolve()
    if staging.parent == output_dir:  # `output_dir` cannot be exchanged: one entry at a time
        logger.warning("%s cannot be replaced in one step; moving the final outputs in one by one.", output_dir)
        move_into_place(staging, output_dir)
        return
    new_names = sorted(entry.name for entry in staging.iterdir())
    _write_json_atomically(staging / NEW_OUTPUTS_MARKER, new_names)
    for entry in sorted(output_dir.iterdir()):
        if entry.name not in new_names:
            os.replace(entry, staging / entry.name)
    old = swap_folders(staging, output_dir)
    (output_dir / NEW_OUTPUTS_MARKER).unlink()
    shutil.rmtree(old)


def swap_folders(source: Path, target: Path) -> Path:
    """Puts the folder `source` in the place of the folder `target` (on the same file system) and returns where the
    old `target` went: `source`'s path after an atomic exchange ([`exchange_folders`]); where the file system cannot
    exchange, `.{name}.partial-final-previous` beside `target` (renamed aside first, then `source` renamed in: a kill
    in between leaves no `target`, which [`recover_output_folder`] renames back)."""
    if exchange_folders(source, target):
        return source
    previous = previous_folder(target)
    os.replace(target, previous)
    os.replace(source, target)
    return previous


def replace_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Replaces the folder `target` (if it exists) by the folder `source`, a sibling of it, without a moment when a
    reader finds `target` half-written or (where the file system can exchange folders) missing ([`swap_folders`]),
    then deletes the old `target`. Call [`recover_output_folder`] on `target` before writing `source`."""
    source, target = Path(source).resolve(), Path(target).resolve()
    if not target.exists():
        os.replace(source, target)
        return
    shutil.rmtree(swap_folders(source, target))


def move_into_place(source: Path, target: Path) -> None:
    """Moves every entry of `source` into `target`, replacing an entry of the same name, then removes `source` (the
    fallback of [`replace_output_folder`]: each entry is replaced whole, but a kill between two entries leaves a
    mixture).

    Each entry is replaced by a rename (a folder after its old version is renamed aside), so it is never seen
    half-written; folders go first and `model_index.json` (what makes `target` a pipeline folder) last.
    """
    entries = sorted(source.iterdir(), key=lambda path: (path.name == "model_index.json", path.is_file(), path.name))
    for entry in entries:
        destination = target / entry.name
        stale = target / f"{PARTIAL_FINAL_NAME}-stale-{entry.name}"
        replaced = destination.exists() and (destination.is_dir() or entry.is_dir())
        if replaced:
            os.replace(destination, stale)
        os.replace(entry, destination)
        if replaced:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    source.rmdir()
