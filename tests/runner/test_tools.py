"""The model's tools: path guards, editor semantics, and the missing-context report."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from taskbox_runner.tools import (
    EDITOR_TOOL_NAME,
    MAX_VIEW_CHARS,
    REPORT_MISSING_TOOL_NAME,
    RUN_CHECKS_TOOL_NAME,
    AccessRules,
    MissingContextLog,
    ModelTools,
    ToolRefusal,
    WorkspaceEditor,
    is_junk_path,
    normalise_path,
    tool_definitions,
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A small repository: a readable file, an owned folder, an owned placeholder, a secret."""
    root = tmp_path / "work"
    (root / "app/api/routes").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "app/main.py").write_text("line1\nline2\nline3\n")
    (root / "app/api/routes/users.py").write_text(
        "def a():\n    return 1\n\ndef b():\n    return 1\n"
    )
    (root / "tests/test_users.py").write_text("")
    (root / "secret.txt").write_text("s3cret\n")
    return root


@pytest.fixture
def editor(workdir: Path) -> WorkspaceEditor:
    """An editor that may read app/main.py and write app/api/routes/ and tests/test_users.py."""
    rules = AccessRules.from_plan(["app/main.py"], ["app/api/routes/", "tests/test_users.py"])
    return WorkspaceEditor(workdir, rules)


def call(editor: WorkspaceEditor, **tool_input: object) -> tuple[str, bool]:
    """Run one editor command; (text, is_error)."""
    outcome = editor.handle(tool_input)
    return outcome.text, outcome.is_error


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("app/main.py", "app/main.py"), ("./app//main.py", "app/main.py"), ("app/", "app"), (".", "")],
)
def test_normalise_path_accepts_relative_forms(raw: str, expected: str) -> None:
    """Relative paths are normalised ('.', '//', trailing '/')."""
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    "raw", ["/work/app/main.py", "../etc/passwd", "app/../../x", "a\x00b", "a\\b", "", "a\nb", 7]
)
def test_normalise_path_refuses_escapes(raw: object) -> None:
    """Absolute paths, '..', control characters, backslashes and non-strings are refused."""
    with pytest.raises(ToolRefusal):
        normalise_path(raw)


def test_absolute_path_refusal_suggests_the_relative_form(editor: WorkspaceEditor) -> None:
    """An absolute /work path is refused with the relative path to use instead."""
    text, is_error = call(editor, command="view", path="/work/app/main.py")
    assert is_error
    assert "'app/main.py'" in text


def test_view_shows_numbered_lines_and_ranges(editor: WorkspaceEditor) -> None:
    """view numbers lines like cat -n; view_range picks lines, -1 meaning to the end."""
    text, is_error = call(editor, command="view", path="app/main.py")
    assert not is_error
    assert text == "     1\tline1\n     2\tline2\n     3\tline3"
    text, _ = call(editor, command="view", path="app/main.py", view_range=[2, -1])
    assert text == "     2\tline2\n     3\tline3"
    text, is_error = call(editor, command="view", path="app/main.py", view_range=[5, 6])
    assert is_error
    assert "3 lines" in text


def test_view_outside_the_plan_is_refused(editor: WorkspaceEditor) -> None:
    """A file that exists but is not planned cannot be viewed, and the refusal names the report tool."""
    text, is_error = call(editor, command="view", path="secret.txt")
    assert is_error
    assert REPORT_MISSING_TOOL_NAME in text
    assert "s3cret" not in text


def test_directory_listing_shows_only_planned_paths(editor: WorkspaceEditor) -> None:
    """Listings go two levels deep and show planned files and their folders, never unplanned files."""
    text, is_error = call(editor, command="view", path=".")
    assert not is_error
    assert "app/main.py" in text
    assert "app/api/" in text
    assert "tests/test_users.py" in text
    assert "secret.txt" not in text
    text, is_error = call(editor, command="view", path="app/api")
    assert not is_error
    assert "app/api/routes/users.py" in text


def test_symlink_to_an_outside_file_is_neither_read_nor_written(
    editor: WorkspaceEditor, workdir: Path, tmp_path: Path
) -> None:
    """A symlink planted in an owned folder is refused for view, create and str_replace."""
    outside = tmp_path / "outside.txt"
    outside.write_text("outside\n")
    (workdir / "app/api/routes/link.py").symlink_to(outside)
    for tool_input in (
        {"command": "view", "path": "app/api/routes/link.py"},
        {"command": "create", "path": "app/api/routes/link.py", "file_text": "pwned\n"},
        {
            "command": "str_replace",
            "path": "app/api/routes/link.py",
            "old_str": "outside",
            "new_str": "x",
        },
    ):
        text, is_error = call(editor, **tool_input)
        assert is_error, tool_input
        assert "link" in text
    assert outside.read_text() == "outside\n"


def test_symlinked_folder_on_the_way_is_refused(
    editor: WorkspaceEditor, workdir: Path, tmp_path: Path
) -> None:
    """A symlinked directory inside an owned folder is not followed when creating a file through it."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (workdir / "app/api/routes/sub").symlink_to(target)
    text, is_error = call(editor, command="create", path="app/api/routes/sub/x.py", file_text="x\n")
    assert is_error
    assert "symbolic link" in text
    assert not (target / "x.py").exists()


def test_hard_linked_file_is_not_written(
    editor: WorkspaceEditor, workdir: Path, tmp_path: Path
) -> None:
    """Writing through a file with a second hard link is refused, so the other name stays intact."""
    other = tmp_path / "other.py"
    other.write_text("original\n")
    os.link(other, workdir / "app/api/routes/hard.py")
    text, is_error = call(
        editor, command="create", path="app/api/routes/hard.py", file_text="new\n"
    )
    assert is_error
    assert "hard link" in text
    assert other.read_text() == "original\n"


def test_create_writes_only_under_owned_paths(editor: WorkspaceEditor, workdir: Path) -> None:
    """create works in an owned folder (making subfolders) and on the owned placeholder, nowhere else."""
    text, is_error = call(
        editor, command="create", path="app/api/routes/v2/items.py", file_text="x = 1\n"
    )
    assert not is_error
    assert text.startswith("Created")
    assert (workdir / "app/api/routes/v2/items.py").read_text() == "x = 1\n"

    text, is_error = call(
        editor, command="create", path="tests/test_users.py", file_text="def test(): ...\n"
    )
    assert not is_error
    assert text.startswith("Overwrote")

    for path in ("app/main.py", "app/new.py", "tests/other.py", "secret.txt"):
        text, is_error = call(editor, command="create", path=path, file_text="bad\n")
        assert is_error, path
        assert "not under a path this task owns" in text
    assert (workdir / "app/main.py").read_text() == "line1\nline2\nline3\n"
    assert editor.written_paths == ["app/api/routes/v2/items.py", "tests/test_users.py"]


def test_cache_files_are_never_written(editor: WorkspaceEditor) -> None:
    """__pycache__, .pyc and .coverage paths are refused even under an owned folder."""
    for path in (
        "app/api/routes/__pycache__/x.py",
        "app/api/routes/x.pyc",
        "app/api/routes/.coverage",
    ):
        text, is_error = call(editor, command="create", path=path, file_text="x")
        assert is_error, path
        assert "cache" in text


def test_str_replace_needs_exactly_one_match(editor: WorkspaceEditor, workdir: Path) -> None:
    """str_replace refuses no match and several matches (naming their lines), and edits a unique one."""
    path = "app/api/routes/users.py"
    text, is_error = call(editor, command="str_replace", path=path, old_str="return 2", new_str="x")
    assert is_error
    assert "not found" in text
    text, is_error = call(editor, command="str_replace", path=path, old_str="return 1", new_str="x")
    assert is_error
    assert "lines 2, 5" in text
    text, is_error = call(
        editor,
        command="str_replace",
        path=path,
        old_str="def b():\n    return 1",
        new_str="def b():\n    return 2",
    )
    assert not is_error
    assert "return 2" in text
    assert (workdir / path).read_text() == "def a():\n    return 1\n\ndef b():\n    return 2\n"


def test_str_replace_with_no_new_str_deletes(editor: WorkspaceEditor, workdir: Path) -> None:
    """Leaving out new_str removes the matched text."""
    path = "app/api/routes/users.py"
    _, is_error = call(
        editor, command="str_replace", path=path, old_str="\ndef b():\n    return 1\n"
    )
    assert not is_error
    assert (workdir / path).read_text() == "def a():\n    return 1\n"


def test_str_replace_on_a_read_only_file_is_refused(editor: WorkspaceEditor) -> None:
    """A readable but not owned file cannot be edited."""
    text, is_error = call(
        editor, command="str_replace", path="app/main.py", old_str="line1", new_str="x"
    )
    assert is_error
    assert "not under a path this task owns" in text


def test_insert_after_a_line(editor: WorkspaceEditor, workdir: Path) -> None:
    """insert puts text after insert_line (0 = top), accepting insert_text or new_str, and checks the range."""
    path = "app/api/routes/users.py"
    _, is_error = call(editor, command="insert", path=path, insert_line=0, insert_text="import os")
    assert not is_error
    _, is_error = call(editor, command="insert", path=path, insert_line=6, new_str="# end\n")
    assert not is_error
    lines = (workdir / path).read_text().splitlines()
    assert lines[0] == "import os"
    assert lines[-1] == "# end"
    text, is_error = call(editor, command="insert", path=path, insert_line=99, insert_text="x")
    assert is_error
    assert "0 to 7" in text


def test_huge_views_are_cut_with_a_hint(editor: WorkspaceEditor, workdir: Path) -> None:
    """A long file's view is cut near MAX_VIEW_CHARS and says how to see the rest."""
    (workdir / "app/api/routes/big.py").write_text("".join(f"x{i} = {i}\n" for i in range(20_000)))
    text, is_error = call(editor, command="view", path="app/api/routes/big.py")
    assert not is_error
    assert len(text) < MAX_VIEW_CHARS + 300
    assert "view_range" in text


def test_binary_and_bad_input_are_refused(editor: WorkspaceEditor, workdir: Path) -> None:
    """Non-UTF-8 files, unknown commands, undo_edit and malformed input give error results."""
    (workdir / "app/api/routes/blob.bin").write_bytes(b"\xff\xfe\x00")
    cases: list[tuple[dict[str, object], str]] = [
        ({"command": "view", "path": "app/api/routes/blob.bin"}, "UTF-8"),
        ({"command": "delete", "path": "app/main.py"}, "unknown command"),
        ({"command": "undo_edit", "path": "app/main.py"}, "undo_edit"),
        ({"command": "create", "path": "app/api/routes/x.py"}, "file_text"),
        ({"command": "view", "path": "app/main.py", "extra": 1}, "extra"),
        ({"command": "insert", "path": "app/api/routes/users.py", "insert_line": 1}, "insert_text"),
    ]
    for tool_input, expected in cases:
        text, is_error = call(editor, **tool_input)
        assert is_error, tool_input
        assert expected in text, (tool_input, text)


def test_missing_context_log_keeps_path_and_reason() -> None:
    """Reports become 'path — reason' lines, without repeats; bad input is an error result."""
    log = MissingContextLog()
    outcome = log.handle(
        {"files": ["app/core/config.py", "app/db/session.py"], "reason": "settings\nand db"}
    )
    assert not outcome.is_error
    log.handle({"files": ["app/core/config.py"], "reason": "settings and db"})
    assert log.entries == [
        "app/core/config.py — settings and db",
        "app/db/session.py — settings and db",
    ]
    assert log.handle({"files": [], "reason": "x"}).is_error


def test_model_tools_dispatch_and_contain_failures(editor: WorkspaceEditor) -> None:
    """ModelTools routes by name, answers unknown tools and non-object input, and turns crashes into errors."""

    def broken_checks() -> str:
        raise RuntimeError("boom")

    tools = ModelTools(editor=editor, missing_context=MissingContextLog(), run_checks=broken_checks)
    assert not tools.run(EDITOR_TOOL_NAME, {"command": "view", "path": "app/main.py"}).is_error
    assert tools.run("bash", {}).is_error
    assert tools.run(EDITOR_TOOL_NAME, ["not", "an", "object"]).is_error
    crashed = tools.run(RUN_CHECKS_TOOL_NAME, {})
    assert crashed.is_error
    assert "internal error" in crashed.text


def test_tool_definitions_are_stable_and_typed() -> None:
    """The editor is the typed text_editor_20250728 tool; the list is the same on every call."""
    first = tool_definitions()
    assert first == tool_definitions()
    editor_tool = next(t for t in first if t["name"] == EDITOR_TOOL_NAME)
    assert editor_tool.get("type") == "text_editor_20250728"
    assert [t["name"] for t in first] == sorted(t["name"] for t in first)


def test_access_rules_and_junk() -> None:
    """Readable covers owned paths; listing is allowed on ancestors of planned paths only."""
    rules = AccessRules.from_plan(["app/main.py"], ["app/api/routes/"])
    assert rules.may_read("app/api/routes/x.py")
    assert not rules.may_write("app/main.py")
    assert rules.may_list("app")
    assert rules.may_list("app/api/routes/sub")
    assert not rules.may_list("docs")
    assert rules.may_make_dir("app/api/routes/sub")
    assert not rules.may_make_dir("app/api")
    assert is_junk_path("a/__pycache__/b.py")
    assert is_junk_path("a/.coverage.host.1")
    assert not is_junk_path("a/coverage.py")
