"""The class choosers of the Space, one convention for every tab (app.py, tabs_sets.py, tab_tokenbridge.py).

A chooser's choices are `(caption, value)` pairs: the caption is the class's name as every figure writes it
([`~tokenset_diffusers.class_labels.class_caption`]: `"3"` for the bundled digits, `"7: golden retriever"` for a
named class), the value the class id (an `int`). A tab that can generate without a class (unconditional) offers one
more choice first, `("no class (unconditional)", NO_CLASS)`. What comes back from a chooser, or from `gradio_client`
(which documents the choices as strings), goes through [`parse_class_choice`] / [`parse_class_choices`]: an id (`3`,
`"3"`), a caption (`"3: three"`) or a class name (`"three"`) becomes the pipeline's class id, the "no class" choice
`None` (the pipelines' unconditional label).
"""

import numbers
from collections.abc import Sequence

import gradio as gr

from tokenset_diffusers.class_labels import class_caption, label_to_id


NO_CLASS = -1  # the value of the "no class" choice (the pipelines take `None`: the null class, unconditional)
NO_CLASS_CAPTION = "no class (unconditional)"


def _num_classes(pipeline) -> int:
    return pipeline.transformer.config.num_classes


def class_name(pipeline, class_id: int) -> str:
    """The caption of `class_id`: `"<id>: <first name>"`, or the bare id for a pipeline without `id2label` (or with
    the id as the name, as the bundled digits)."""
    return class_caption(pipeline.config.id2label, class_id)


def class_choices(pipeline, no_class: bool = False) -> list[tuple[str, int]]:
    """`(caption, class id)` for every class of `pipeline` (a TokenSet or TokenBridge pipeline), e.g. `("3", 3)` or
    `("7: seven", 7)`; with `no_class=True` the `(NO_CLASS_CAPTION, NO_CLASS)` choice comes first."""
    choices = [(class_name(pipeline, class_id), class_id) for class_id in range(_num_classes(pipeline))]
    return [(NO_CLASS_CAPTION, NO_CLASS), *choices] if no_class else choices


def parse_class_choice(pipeline, choice: int | str | None, no_class: bool = False) -> int | None:
    """The pipeline's class label for a chooser's value: a class id (`int`, or its digits as a `str`), a caption of
    [`class_choices`] or a class name (a synonym of `id2label` included). With `no_class=True`, `NO_CLASS`, its
    caption and `None` give `None` (unconditional). Raises `ValueError` naming the value for anything else."""
    num_classes = _num_classes(pipeline)
    if no_class and (choice is None or choice == NO_CLASS_CAPTION or (_is_integer(choice) and choice == NO_CLASS)):
        return None
    if isinstance(choice, str):
        text = choice.strip()
        if no_class and text == str(NO_CLASS):
            return None
        head = text.split(":", 1)[0].strip()
        if head.isdigit() and int(head) < num_classes and text in (head, class_name(pipeline, int(head))):
            return int(head)
        names = label_to_id(pipeline.config.id2label)
        if text in names:
            return names[text]
    elif _is_integer(choice) and 0 <= choice < num_classes:
        return int(choice)
    allowed = f"a class id in [0, {num_classes}), a caption or a class name" + (
        f", or {NO_CLASS_CAPTION!r}" if no_class else ""
    )
    raise ValueError(f"Unknown class {choice!r}: pick {allowed}.")


def parse_class_choices(pipeline, choices: Sequence[int | str] | None) -> list[int]:
    """The class ids of a multi-class chooser's values (see [`parse_class_choice`]); `ValueError` when there is none
    or one is unknown."""
    if choices is not None and not isinstance(choices, (list, tuple)):
        raise ValueError(
            f"The classes must be a list of class ids or names, got {type(choices).__name__} {choices!r}."
        )
    if not choices:
        raise ValueError("Pick at least one class.")
    return [parse_class_choice(pipeline, choice) for choice in choices]


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def class_chooser(pipeline, value, label: str, multiselect: bool = False, no_class: bool = False, **kwargs):
    """A `gr.Dropdown` over [`class_choices`] (the same captions and values on every tab), searchable by name. It
    lets typed text through (`allow_custom_value`), as `gradio_client` sends strings: the tab's function reads the
    value with [`parse_class_choice`] / [`parse_class_choices`], which refuse what is not a class. `kwargs` go to
    `gr.Dropdown` (`info`, `elem_id`, ...)."""
    return gr.Dropdown(
        choices=class_choices(pipeline, no_class=no_class),
        value=value,
        label=label,
        multiselect=multiselect,
        filterable=True,
        allow_custom_value=True,
        **kwargs,
    )
