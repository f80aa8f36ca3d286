"""Click options derived from config dataclasses, so that a setting is declared once.

A command that builds a config dataclass from its options would otherwise repeat each field as a
``click.option``, with its own default and type, and the two copies drift apart. Here the dataclass
is the one source of truth: every field with a default becomes ``--field-name``, its type comes
from the annotation, its default from the field, and the rest from ``field.metadata``:

- ``help``: the option's help text;
- ``flag``: a different primary flag name (``"data-seed"``: ``--data-seed``, click destination
  ``data_seed``), for a field whose name would clash with another config's;
- ``aliases``: extra flag names (``["heads"]``), e.g. to keep an old command line working;
- ``choices``: the allowed values (``click.Choice``);
- ``min`` / ``max`` (with ``min_open`` / ``max_open`` for strict bounds): the allowed range of a
  number, checked on the command line (``click.IntRange`` / ``click.FloatRange``).

Supported annotations: ``bool`` (a ``--x/--no-x`` switch), ``int``, ``float``, ``str``,
``X | None`` (type X, default None), ``list[X] | None`` (comma-separated: ``10,20,30``).

    @click.command()
    @config_options(OptimConfig, DataConfig)
    def train(**options):
        optim = config_from_options(OptimConfig, options)  # pops OptimConfig's options
        data = config_from_options(DataConfig, options)

``config_values`` gives a config's values as a dict instead, for a config completed later (e.g.
with sizes read from a file), and ``option_values`` the reverse (a config's values by option);
``field_names`` and ``option_names`` map every name of a setting to its field, for settings named
outside click (a sweep's grid keys, a config file).
"""

from __future__ import annotations

import dataclasses
import types
import typing

import click


class CommaList(click.ParamType):
    """``10,20,30`` -> ``[10, 20, 30]``, each item converted by ``item_type``."""

    def __init__(self, item_type: type):
        self.item_type = item_type
        self.name = f"{item_type.__name__.upper()},..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return [self.item_type(item) for item in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.item_type.__name__}", param, ctx)


def _option_fields(config_class, skip=()) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that become options: those with a default, less ``skip``."""
    return [f for f in dataclasses.fields(config_class) if f.name not in skip
            and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]


def _flags(field: dataclasses.Field) -> list[str]:
    """The field's flag names without dashes, primary first: ``["n-heads", "heads"]``."""
    return [field.metadata.get("flag", field.name.replace("_", "-")), *field.metadata.get("aliases", ())]


def _destination(field: dataclasses.Field) -> str:
    """The click keyword argument the field's value arrives in (its primary flag, underscored)."""
    return _flags(field)[0].replace("-", "_")


def _click_type(annotation):
    """(click type, is a switch) of an annotation; ``X | None`` is X, its None the default."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        types_ = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = types_[0] if len(types_) == 1 else annotation  # X | Y is not supported
    if annotation is bool:
        return bool, True
    if typing.get_origin(annotation) is list:
        return CommaList(typing.get_args(annotation)[0]), False
    if annotation in (int, float, str):
        return annotation, False
    raise TypeError(f"no click option for a field of type {annotation}")


def _field_type(field: dataclasses.Field, annotation):
    """(click type, is a switch) of a field: its annotation's, narrowed by its choices or range."""
    click_type, switch = _click_type(annotation)
    meta = field.metadata
    if "choices" in meta:
        click_type = click.Choice(list(meta["choices"]))
    elif "min" in meta or "max" in meta:
        ranged = click.IntRange if click_type is int else click.FloatRange
        click_type = ranged(min=meta.get("min"), max=meta.get("max"), min_open=meta.get("min_open", False),
                            max_open=meta.get("max_open", False))
    return click_type, switch


def _option(field: dataclasses.Field, annotation):
    """The ``click.option`` decorator of one field."""
    click_type, switch = _field_type(field, annotation)
    names = [f"--{name}/--no-{name}" if switch else f"--{name}" for name in _flags(field)]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory
    return click.option(*names, _destination(field), type=None if switch else click_type, default=default,
                        show_default=True, help=field.metadata.get("help"))


def config_options(*config_classes, skip=()):
    """A decorator adding one click option per field with a default of each of ``config_classes``
    (in their order), except the field names in ``skip``. Two fields of the same destination
    are refused: give one of them a ``flag``."""

    def decorate(command):
        fields = [(f, typing.get_type_hints(cls)[f.name]) for cls in config_classes for f in _option_fields(cls, skip)]
        destinations = [_destination(f) for f, _ in fields]
        clashes = sorted({d for d in destinations if destinations.count(d) > 1})
        if clashes:
            raise ValueError(f"options {clashes} come from two config fields; give one a 'flag' in its metadata")
        for f, annotation in reversed(fields):  # click lists the last decorator applied first
            command = _option(f, annotation)(command)
        return command

    return decorate


def config_values(config_class, options: dict) -> dict:
    """The field values of ``config_class`` in parsed click ``options``, by field name; they are
    popped from ``options``, so what remains belongs to other configs or to the command."""
    return {f.name: options.pop(_destination(f)) for f in _option_fields(config_class) if _destination(f) in options}


def option_values(config, skip=()) -> dict:
    """The inverse of ``config_values``: the option fields of the dataclass instance ``config`` by
    their click destination (``{"data_seed": 0, ...}`` for a DataConfig), e.g. to write a config
    file that the command reads back."""
    return {_destination(f): getattr(config, f.name) for f in _option_fields(type(config), skip)}


def config_from_options(config_class, options: dict, **fixed):
    """``config_class`` built from its fields in parsed click ``options`` (popped from them) and
    the ``fixed`` fields, which have no option (e.g. sizes known only at run time)."""
    return config_class(**config_values(config_class, options), **fixed)


def parse_setting(config_classes, name: str, value):
    """``value`` converted as the option of field ``name`` (of one of ``config_classes``) would
    convert it: '3e-3' -> 0.003 for a float, with its choices and range checked; None stays None
    where the field allows it. Raises click.BadParameter with the option's own message."""
    for cls in config_classes:
        for f in _option_fields(cls):
            if f.name == name:
                annotation = typing.get_type_hints(cls)[f.name]
                if value is None and type(None) in typing.get_args(annotation):
                    return None
                click_type, switch = _field_type(f, annotation)
                return (click.BOOL if switch else click.types.convert_type(click_type)).convert(value, None, None)
    raise KeyError(name)


def option_names(*config_classes, skip=()) -> dict[str, tuple[type, str]]:
    """Every name of an option of ``config_classes``, as on the command line: its flags and
    aliases, with dashes or underscores, mapped to (config class, field name). Unlike
    ``field_names``, a field with its own ``flag`` is known by that flag only (``data-seed``),
    so that two configs' fields of one name (``seed``) stay apart."""
    names = {}
    for cls in config_classes:
        for f in _option_fields(cls, skip):
            for name in _flags(f):
                names[name.replace("-", "_")] = names[name.replace("_", "-")] = (cls, f.name)
    return names


def destination(config_class, name: str) -> str:
    """The click destination of field ``name`` of ``config_class`` (``seed`` of DataConfig:
    ``data_seed``)."""
    return _destination(next(f for f in dataclasses.fields(config_class) if f.name == name))


def field_names(*config_classes, skip=()) -> dict[str, str]:
    """Every name a user may give a setting, mapped to its field name: the field name, and each
    flag and alias, with dashes or underscores (``heads``, ``n-heads``, ``n_heads`` -> ``n_heads``;
    ``data-seed`` -> ``seed``). Only the fields ``config_options`` makes options of."""
    names = {}
    for cls in config_classes:
        for f in _option_fields(cls, skip):
            for name in (f.name, *_flags(f)):
                names[name] = names[name.replace("-", "_")] = names[name.replace("_", "-")] = f.name
    return names
