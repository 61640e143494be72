"""The builtin scorers as classes users import and type-check (Safety(), LatencyUnder(threshold_ms=...)), one
per entry of tracejudge.schema.BUILTINS.

Each class is named as its builtin; its builtin name, default scorer name and docstring are read from the
catalogue when the class is defined (a class the catalogue does not list fails at import), and a param left
as None is sent with the catalogue's default. Only the signatures are written here, so that editors and type
checkers see them; tests/test_schema.py checks them against the catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import BUILTINS, GUIDELINES, Builtin, snake_case

from .client import Scorer

BUILTIN_CLASSES: dict[str, type[Scorer]] = {}  # builtin name -> its class, filled as the classes are defined


def _doc(entry: Builtin) -> str:
    kind = "LLM judge" if entry.family == "judge" else "no model needed"
    summary = f"{entry.description} ({kind}; `builtin: {entry.name}`, default name {entry.default_name!r})"
    params = [
        f"    {p.name} ({p.type}, {'required' if p.required else f'default {p.default!r}'}"
        f"{', one of ' + ', '.join(p.choices) if p.choices else ''}): {p.description}"
        for p in entry.params
    ]
    return summary + ("\n\nParams (None: the default):\n" + "\n".join(params) if params else "")


class _Catalogued(Scorer):
    family: ClassVar[Literal["judge", "check"]]
    entry: ClassVar[Builtin]
    builtin_name: ClassVar[str]
    default_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__.startswith("_"):
            return
        entry = BUILTINS.get(cls.__name__)
        if entry is None or entry.family != cls.family:
            raise TypeError(f"{cls.__name__} is not a builtin {cls.family} in tracejudge.schema.BUILTINS")
        cls.entry, cls.builtin_name, cls.default_name = entry, entry.name, entry.default_name
        cls.__doc__ = _doc(entry)
        BUILTIN_CLASSES[entry.name] = cls

    @classmethod
    def _handles(cls, message: pb.Scorer) -> bool:
        return message.WhichOneof("kind") == "builtin" and message.builtin == cls.__dict__.get("builtin_name")


class _Judge(_Catalogued):
    family = "judge"

    def __init__(self, *, name: str | None = None, model: str | None = None) -> None:
        super().__init__(name=name or self.default_name, builtin=self.builtin_name, model=model)


class _Check(_Catalogued):
    family = "check"

    def __init__(self, *, name: str | None = None, **params: Any) -> None:
        given = {key: value for key, value in params.items() if value is not None}
        defaults = {p.name: p.default for p in self.entry.params if p.default is not None}
        super().__init__(name=name or self.default_name, builtin=self.builtin_name, params={**defaults, **given})


class Safety(_Judge):
    pass


class RelevanceToQuery(_Judge):
    pass


class RetrievalGroundedness(_Judge):
    pass


class RetrievalRelevance(_Judge):
    pass


class RetrievalSufficiency(_Judge):
    pass


class Correctness(_Judge):
    pass


class ExpectationsGuidelines(_Judge):
    pass


class Completeness(_Judge):
    pass


class ToolCallCorrectness(_Judge):
    pass


class ToolCallEfficiency(_Judge):
    pass


class Equivalence(_Judge):
    pass


class Fluency(_Judge):
    pass


class Summarization(_Judge):
    pass


class ConversationCompleteness(_Judge):
    pass


class ConversationalGuidelines(_Judge):
    def __init__(self, *, guidelines: str | Sequence[str], name: str | None = None, model: str | None = None) -> None:
        rules = [guidelines] if isinstance(guidelines, str) else list(guidelines)
        Scorer.__init__(self, name=name or self.default_name, builtin=self.builtin_name, model=model,
                        params={"guidelines": rules})  # fmt: skip


class ConversationalRoleAdherence(_Judge):
    pass


class ConversationalSafety(_Judge):
    pass


class ConversationalToolCallEfficiency(_Judge):
    pass


class KnowledgeRetention(_Judge):
    pass


class UserFrustration(_Judge):
    pass


class NoError(_Check):
    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class LatencyUnder(_Check):
    def __init__(self, threshold_ms: float | None = None, *, name: str | None = None) -> None:
        super().__init__(name=name, threshold_ms=threshold_ms)


class TokenBudget(_Check):
    def __init__(self, max_tokens: int | None = None, *, name: str | None = None) -> None:
        super().__init__(name=name, max_tokens=max_tokens)


class NonEmptyResponse(_Check):
    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class ValidJson(_Check):
    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)


class RegexMatch(_Check):
    def __init__(self, pattern: str, *, must_match: bool | None = None, name: str | None = None) -> None:
        super().__init__(name=name, pattern=pattern, must_match=must_match)


class NoPii(_Check):
    def __init__(self, *, field: Literal["outputs", "inputs"] | None = None, name: str | None = None) -> None:
        super().__init__(name=name, field=field)


class Guidelines(Scorer):
    """Pass/fail against natural-language guidelines (LLM judge)."""

    def __init__(
        self, *, name: str = snake_case(GUIDELINES), guidelines: str | Sequence[str], model: str | None = None
    ) -> None:
        super().__init__(name=name, guidelines=guidelines, model=model)

    @classmethod
    def _handles(cls, message: pb.Scorer) -> bool:
        return bool(message.WhichOneof("kind") == "guidelines")


def make_judge(name: str, instructions: str, model: str | None = None, feedback_value_type: Any = None) -> Scorer:
    """An LLM judge from a prompt template using {{ inputs }}, {{ outputs }}, {{ expectations }} or {{ trace }}.

    `feedback_value_type`: bool, int, float, str, or Literal["a", "b", ...] for one of those categories.
    """
    return Scorer(name=name, instructions=instructions, model=model, feedback_value_type=feedback_value_type)
