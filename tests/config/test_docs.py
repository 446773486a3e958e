"""docs/config.md is generated from the config model and must match it (regenerate-and-compare)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from ibtpo.config.schema import ALIASES, TrainConfig
from ibtpo.config.docs import allowed, builtin_names, render, sections
from ibtpo.core.registry import Registry

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_config_page_is_current():
    assert PAGE.read_text() == render(), ("docs/config.md is stale: run `python scripts/gen_config_docs.py` "
                                          "and commit the result")


def test_every_field_and_alias_listed_once():
    text = render()
    for name in TrainConfig.model_fields:
        rows = re.findall(rf"^\| `{name}` \|", text, flags=re.MULTILINE)
        assert len(rows) == 1, name
    for alias, field in ALIASES.items():
        assert f"| `{alias}` | `{field}` |" in text


def test_sections_follow_the_class_comments():
    groups = sections(TrainConfig)
    assert len(groups) > 1  # the section comments were found
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(TrainConfig.model_fields)  # each field once, none lost


class _Toy(BaseModel):
    """A model shaped like TrainConfig, to pin the rendering rules."""

    # --- first ---
    a: int = Field(3, ge=1, le=9, description="A count | with a pipe.")
    b: float | None = Field(None, gt=0.0, description="Optional, x*y.")
    # --- second part ---
    c: str = Field("\n\n", min_length=1, description="A delimiter.")
    d: list[str] = Field(default_factory=list, description="Some paths.")


def test_render_rules_on_a_toy_model():
    assert sections(_Toy) == {"first": ["a", "b"], "second part": ["c", "d"]}
    assert allowed("a", _Toy, {}) == "int >= 1 <= 9"
    assert allowed("b", _Toy, {}) == "float or null > 0.0"
    text = render(_Toy, {"alias_a": "a"}, registries={})
    assert "| `a` | int >= 1 <= 9 | `3` |  | A count \\| with a pipe. |" in text
    assert "| `b` | float or null > 0.0 | `null` |  | Optional, x\\*y. |" in text
    assert '| `c` | str length >= 1 | `"\\n\\n"` |' in text
    assert "| `d` | list of str | `[]` |" in text
    assert "## second part" in text and "| `alias_a` | `a` |" in text


def test_registered_fields_list_builtins_only():
    registry = Registry("toy", builtins="")
    registry.register("ours", render)  # a function of the ibtpo package
    registry.register("theirs", test_render_rules_on_a_toy_model)  # one defined outside it (here: a test)
    assert builtin_names(registry) == ["ours"]
    assert allowed("c", _Toy, {"c": registry}) == "a registered name or `module:name`; built in: `ours`"
    page = render()
    for name in ("ib_tpo", "grpo", "treerl"):  # the real registries' built-in names reach the page
        assert f"`{name}`" in page.split("| `adv_estimator` |")[1].split("\n")[0]
