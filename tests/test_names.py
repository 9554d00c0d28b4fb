"""Names that become paths, keys or labels: one rule, and a second check where a path is
built, so no name reaches outside its directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from layerfleet.agent import names

VALID = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", fullmatch=True)


@pytest.mark.parametrize("name", ["mobilenet", "MobileNetV2", "resnet-50.v2", "a", "_x",
                                  "lf-0a1b2c3d4e5f", "x" * 64])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert names.check_name("deployment", name) == name


@pytest.mark.parametrize("name", ["..", "../x", "/x", "...", ".", "", ".hidden", "a/b",
                                  "a\\b", "x" * 65, "a\x00b", "a b", "caf\u00e9", "../../../victim",
                                  "/", "a\n", "~1"])
def test_names_outside_the_rule_are_refused_naming_the_rule(name: str) -> None:
    with pytest.raises(names.InvalidName, match="letters, digits"):
        names.check_name("deployment", name)


def test_a_route_is_a_name_or_a_name_and_its_replan_generation() -> None:
    assert names.check_route("d~12") == "d~12"
    for bad in ("d~", "~1", "d~x", "../d~1", "d~1~2"):
        with pytest.raises(names.InvalidName):
            names.check_route(bad)


def test_a_digest_is_64_lower_case_hex() -> None:
    assert names.check_digest("a" * 64)
    for bad in ("A" * 64, "a" * 63, "../" + "a" * 61, ""):
        with pytest.raises(names.InvalidName):
            names.check_digest(bad)


@settings(max_examples=300, deadline=None)
@given(VALID)
def test_every_name_of_the_rule_is_a_direct_child_of_its_directory(name: str) -> None:
    names.check_name("model", name)
    with tempfile.TemporaryDirectory() as directory:
        path = names.inside(Path(directory), name)
        assert path.parent == Path(directory).resolve() and path.name == name


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80) | st.sampled_from(["..", ".", "/", "a/..", "./a", "a/.", "//x"]))
def test_inside_alone_never_leaves_its_directory(name: str) -> None:
    """The second line of defence holds for any text, valid name or not."""
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory).resolve()
        try:
            path = names.inside(base, name)
        except names.InvalidName:
            return
        assert path.parent == base


def test_inside_refuses_a_name_that_is_a_link_out_of_its_directory(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "link").symlink_to(tmp_path)
    with pytest.raises(names.InvalidName):
        names.inside(tmp_path / "dir", "link")


def test_a_refused_name_is_quoted_bounded_in_the_message() -> None:
    with pytest.raises(names.InvalidName) as err:
        names.check_name("model", "x" * 10_000)
    assert len(str(err.value)) < 300
