"""How --help draws sbert's parameters: a flag as a flag, an argument by its name, a value as <type> or <choice|...>.

typer 0.29 draws every flag with a value's metavar (`--normalize <bool>` reads as if it took one, and
`--normalize true` fails), a required argument as `{input}` in the usage line, and a list argument's type as
`<list[str]>`. The command classes here redraw those three and leave the rest (panels, choices, ranges) to typer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _one_value(param: TyperArgument | TyperOption) -> str | None:
    """`<str>` for a parameter that takes a list of str (several arguments, a repeatable option); else None."""
    element = get_args(param.type_descriptor.annotation)
    if param.type_descriptor.is_list and element and isinstance(element[0], type):
        return f"<{element[0].__name__}>"
    return None


class _Argument(TyperArgument):
    """An argument that takes several values: its type is that of one value (`<str>`), as its name says the rest."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return _one_value(self) or super().display_type_rich(ctx)


def plain_params(params: Sequence[Any]) -> list[Any]:
    """The parameters as --help should draw them (idempotent: typer asks for them several times a page)."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""  # a flag takes no value; an empty metavar leaves the type column blank
        elif isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = _one_value(param)  # a repeatable option takes one value each time it is given
        elif isinstance(param, TyperArgument) and param.metavar is None:
            # Click's convention, which the usage line and the Arguments panel then share: INPUT, SENTENCES...
            param.metavar = (param.name or "").upper() + ("..." if param.nargs != 1 else "")
            param.__class__ = _Argument  # same object and state; only how its type is drawn differs
    return list(params)


class PlainHelpCommand(TyperCommand):
    """A command whose --help draws flags, arguments and the usage line plainly (see the module)."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return plain_params(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        """`[OPTIONS] INPUT`, `[OPTIONS] SENTENCES...`: arguments by their metavar, optional ones in brackets."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(param.metavar if param.required else f"[{param.metavar}]")
        return pieces


class PlainHelpGroup(TyperGroup):
    """A group (`sbert`, `sbert cache`) whose own flags (--help, --version) are drawn as flags."""

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return plain_params(super().get_params(ctx))
