"""Class names and ids for the class-conditional pipelines (TokenSet and TokenBridge).

A pipeline stores `id2label` (`{id: "name, synonym, ..."}`) in its `model_index.json`; [`ClassLabelsMixin`] maps
names (any synonym) and ids to a `torch.LongTensor` of class ids, failing with the closest names for an unknown one.
"""

import difflib
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .utils.validation import short_repr


def normalise_id2label(id2label: dict | None, num_classes: int) -> dict[int, str] | None:
    """`id2label` with int keys and str values, sorted; `ValueError` for ids outside `[0, num_classes)`."""
    if id2label is None:
        return None
    try:
        normalised = {int(key): str(value) for key, value in dict(id2label).items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f"`id2label` must map class ids to names, got {id2label!r}.") from error
    out_of_range = [key for key in normalised if not 0 <= key < num_classes]
    if out_of_range:
        raise ValueError(
            f"`id2label` has ids {out_of_range[:10]} outside [0, {num_classes}), the transformer's number of classes."
        )
    return dict(sorted(normalised.items()))


def label_to_id(id2label: dict[int, str] | None) -> dict[str, int]:
    """Name -> id for every full name and every comma-separated synonym (the first class to use a synonym wins)."""
    labels = {}
    for key, value in (id2label or {}).items():
        labels[value] = key
        for synonym in value.split(","):
            labels.setdefault(synonym.strip(), key)
    return labels


class ClassLabelsMixin:
    """`get_label_ids` and `prepare_class_labels` for a pipeline with `self.labels` (from [`label_to_id`]) and a
    `transformer` whose config has `num_classes`."""

    labels: dict[str, int]

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Maps class names (a string or a list of strings) to class ids.

        Raises `ValueError` for an unknown name, listing the closest known names and all names (for more than 20, how to
        list them).
        """
        if not self.labels:
            raise ValueError("This pipeline has no `id2label`; pass class ids (integers) instead of names.")
        names = [label] if isinstance(label, str) else list(label)
        ids = []
        for name in names:
            if not isinstance(name, str):
                raise ValueError(f"`get_label_ids` takes class names (strings), got {name!r}.")
            if name not in self.labels:
                raise ValueError(self._unknown_label_message(name))
            ids.append(self.labels[name])
        return ids

    def _unknown_label_message(self, name: str) -> str:
        """`Unknown class name ...` with the closest known names, then all names when there are at most 20, else how
        to list them."""
        known = list(self.labels)
        close = difflib.get_close_matches(name, known, n=5)
        hint = f" Close matches: {close}." if close else ""
        if len(known) <= 20:
            return f"Unknown class name {name!r}.{hint} The class names are {known}."
        return (
            f"Unknown class name {name!r}.{hint} `sorted(pipeline.labels)` lists all {len(known)} names (synonyms "
            "included), `pipeline.config.id2label` the names by class id."
        )

    def prepare_class_labels(self, class_labels: int | str | Sequence[int | str]) -> torch.LongTensor:
        """Class ids (an int, a name, or a list, tuple, array or tensor of either) as a `torch.LongTensor` of shape
        `(batch_size,)`; raises `ValueError` for unknown names, out-of-range ids and anything else."""
        if isinstance(class_labels, (str, numbers.Integral)) and not isinstance(class_labels, bool):
            items = [class_labels]
        elif isinstance(class_labels, (torch.Tensor, np.ndarray)):
            _check_label_array(class_labels)
            items = class_labels.flatten().tolist()
        elif isinstance(class_labels, (list, tuple)):
            items = list(class_labels)
        else:
            raise ValueError(
                "`class_labels` must be a class id (int), a class name (str), or a list, tuple, array or tensor of "
                f"them, got {type(class_labels).__name__} {short_repr(class_labels)}."
            )
        if not items:
            raise ValueError("`class_labels` is empty; pass at least one class id or name.")
        num_classes = self.transformer.config.num_classes
        ids = []
        for item in items:
            if isinstance(item, str):
                ids.extend(self.get_label_ids(item))
            elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
                if not 0 <= item < num_classes:
                    raise ValueError(f"Class id {item} is out of range: this model has {num_classes} classes.")
                ids.append(int(item))
            else:
                raise ValueError(
                    f"`class_labels` must hold class ids (int) or names (str), got {type(item).__name__} "
                    f"{short_repr(item)}."
                )
        return torch.tensor(ids, dtype=torch.long)


def class_caption(id2label: dict[int, str] | None, class_id: int) -> str:
    """`"<id>: <first name>"` (the first of a label's comma-separated synonyms), or the bare id without a label or
    when the name is the id itself (digits named `"0"` ... `"9"` read `"3"`, not `"3: 3"`)."""
    id2label = id2label or {}
    if class_id not in id2label:
        return str(class_id)
    name = id2label[class_id].split(",")[0].strip()
    return str(class_id) if name == str(class_id) else f"{class_id}: {name}"


def _check_label_array(class_labels: torch.Tensor | np.ndarray) -> None:
    """A tensor or array of class labels must hold integers (or, for numpy, names)."""
    if isinstance(class_labels, torch.Tensor):
        integer = not (
            class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool
        )
    else:
        integer = class_labels.dtype.kind in "iuUO"
    if not integer:
        raise ValueError(
            f"`class_labels` must hold integer class ids, got a {type(class_labels).__name__} of dtype "
            f"{class_labels.dtype}."
        )


__all__ = ["ClassLabelsMixin", "label_to_id", "normalise_id2label", "short_repr"]
