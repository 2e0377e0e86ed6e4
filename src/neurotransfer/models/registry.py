"""The backbone registry: ``build_backbone(name, input_shape, **options)``.

A family module registers a builder with :func:`register_backbone`. A builder takes the input
shape ``(D, H, W)`` positionally and its options as keyword-only parameters with type hints
and defaults; the registry derives the option schema from that signature, so an option is
declared in exactly one place. Before the builder runs, the registry rejects unknown names,
unknown options and badly typed or out-of-range values with a message that names them; the
builder itself rejects input shapes its network cannot take.

A backbone that can start from external (torchvision) weights declares them in the same call,
``register_backbone(name, external=[Counterpart(...), ...])``, one per pretrain source (see
:mod:`.external_weights`); :func:`backbone_counterparts` and
:func:`backbones_with_counterpart` are what the settings and the ``pretrain`` stage read.
"""

from __future__ import annotations

import inspect
import operator
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from neurotransfer.models.base import Backbone, BackboneSpec, Shape3D
from neurotransfer.models.external_weights import Counterpart

# Option types shared by the families (pydantic validates them, YAML lists become tuples).
PositiveInt = Annotated[int, Field(gt=0)]
DropoutRate = Annotated[float, Field(ge=0.0, lt=1.0)]

BuilderT = TypeVar("BuilderT", bound=Callable[..., Backbone])


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Backbone]
    options_model: type[BaseModel]
    defaults: dict[str, Any]
    external: dict[str, Counterpart]  # pretrain source -> its torchvision counterpart


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str, external: Iterable[Counterpart] = ()
) -> Callable[[BuilderT], BuilderT]:
    """Register ``builder(input_shape, *, option=default, ...)`` under ``name``, with the
    external weights (at most one :class:`Counterpart` per pretrain source) it can start from."""
    counterparts: dict[str, Counterpart] = {}
    for counterpart in external:
        if counterpart.source in counterparts:
            raise RuntimeError(f"backbone {name!r}: two counterparts for {counterpart.source!r}")
        counterparts[counterpart.source] = counterpart

    def decorate(builder: BuilderT) -> BuilderT:
        if name in _REGISTRY:
            raise RuntimeError(f"backbone {name!r} is registered twice")
        hints = typing.get_type_hints(builder, include_extras=True)
        fields: dict[str, Any] = {}
        defaults: dict[str, Any] = {}
        params = list(inspect.signature(builder).parameters.values())
        for param in params[1:]:  # the first parameter is the input shape
            if param.kind is not inspect.Parameter.KEYWORD_ONLY or param.default is param.empty:
                raise TypeError(
                    f"builder of {name!r}: option {param.name!r} must be keyword-only "
                    "with a default"
                )
            fields[param.name] = (hints[param.name], param.default)
            defaults[param.name] = param.default
        options_model = create_model(
            f"{name}_options",
            __config__=ConfigDict(extra="forbid", frozen=True),
            **fields,
        )
        _REGISTRY[name] = _Entry(builder, options_model, defaults, counterparts)
        return builder

    return decorate


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`, sorted."""
    return sorted(_REGISTRY)


def backbone_options(name: str) -> dict[str, Any]:
    """The options of backbone ``name`` with their default values."""
    return dict(_entry(name).defaults)


def backbone_counterparts(name: str) -> dict[str, Counterpart]:
    """The external weights backbone ``name`` can start from, by pretrain source."""
    return dict(_entry(name).external)


def backbones_with_counterpart(source: str) -> list[str]:
    """The backbones that declare external weights for pretrain ``source``, sorted."""
    return sorted(name for name, entry in _REGISTRY.items() if source in entry.external)


def build_backbone(name: str, input_shape: Shape3D | list[int], **options: Any) -> Backbone:
    """Build backbone ``name`` for volumes of shape ``input_shape`` = ``(D, H, W)``.

    The result maps ``[B, 1, D, H, W]`` to ``[B, out_features]``. Raises ``ValueError`` for an
    unknown name or option, a bad option value, or an input shape the network cannot take,
    naming what is wrong and what would work.
    """
    entry = _entry(name)
    shape = _validate_input_shape(name, input_shape)
    unknown = sorted(set(options) - set(entry.defaults))
    if unknown:
        raise ValueError(
            f"backbone {name!r} has no option(s) {unknown}; "
            f"valid options (with defaults): {_describe_options(entry.defaults)}"
        )
    try:
        validated = entry.options_model.model_validate(options)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
            for e in err.errors()
        )
        raise ValueError(f"backbone {name!r}: invalid option value(s): {problems}") from None
    resolved = {key: getattr(validated, key) for key in entry.defaults}
    backbone = entry.builder(shape, **resolved)
    backbone.spec = BackboneSpec(
        architecture=name,
        input_shape=shape,
        options=validated.model_dump(mode="json"),
    )
    return backbone


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {available_backbones()}")
    return _REGISTRY[name]


def _validate_input_shape(name: str, input_shape: Any) -> Shape3D:
    try:
        shape = tuple(operator.index(side) for side in input_shape)
    except TypeError:  # not iterable, or holds something that is not an integer
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ValueError(
            f"backbone {name!r}: input_shape must be three positive ints (D, H, W) of one "
            f"volume without batch or channel axes, got {input_shape!r}"
        )
    return (shape[0], shape[1], shape[2])


def _describe_options(defaults: dict[str, Any]) -> str:
    if not defaults:
        return "none"
    return ", ".join(f"{key}={value!r}" for key, value in defaults.items())
