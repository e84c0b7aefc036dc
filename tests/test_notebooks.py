"""The notebooks' conventions (DESIGN.md, Notebooks), read from the saved files.

nbval runs the notebooks; these tests read them as a student sees them in
JupyterLab: what the main path talks about, what it shows beside labkit, and
what its saved outputs look like.
"""

from __future__ import annotations

import glob
import os
import re

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_PATH = sorted(glob.glob(os.path.join(REPO, "notebooks", "[0-9][0-9]-*.ipynb")))
APPENDIX = os.path.join(REPO, "notebooks", "A1-how-labkit-works.ipynb")
ALL = MAIN_PATH + [APPENDIX]

# labkit's own machinery, which lives in the appendix: the relay process ("child A"),
# the prepare/join/enter hooks, and the kernel's locking behind the timing tricks.
INTERNALS = re.compile(r"\bchild A\b|\brelay|\bhooks?\b|\bprepare/join|\bRCU\b|rwsem|cgroup_threadgroup",
                       re.IGNORECASE)
STANDARD_TOOL_HEADING = "## The same with the standard tool"
STANDARD_TOOLS = re.compile(r"""["'](unshare|nsenter|lsns|findmnt|ip|tc|cat|echo|sh|tee|mkdir)["']""")
RETINA = '%config InlineBackend.figure_formats = ["retina"]'
WIDGET_REPR = re.compile(r"^(<function [\w.]+\(|interactive\(children=)", re.MULTILINE)
MAX_OUTPUT_LINES = 40


def read(path: str) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def name(path: str) -> str:
    return os.path.basename(path)


def text_outputs(cell: nbformat.NotebookNode) -> list[str]:
    """The text a student sees under a code cell (streams and plain-text results)."""
    texts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            texts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            texts.append(out.get("data", {}).get("text/plain", ""))
    return texts


def test_the_appendix_exists() -> None:
    assert os.path.exists(APPENDIX), "notebooks/A1-how-labkit-works.ipynb: labkit's internals, for the curious"


@pytest.mark.parametrize("path", MAIN_PATH, ids=name)
def test_the_main_path_mentions_no_internals(path: str) -> None:
    """Issue 16: child A, the relay, the hooks, RCU and rwsem live in the appendix."""
    found = []
    for i, cell in enumerate(read(path).cells):
        for text in [cell.source] + (text_outputs(cell) if cell.cell_type == "code" else []):
            found += [f"cell {i}: {m.group(0)!r}" for m in INTERNALS.finditer(text)]
    assert not found, found


def test_the_appendix_explains_the_internals() -> None:
    text = "\n".join(c.source for c in read(APPENDIX).cells if c.cell_type == "markdown")
    for term in ("relay", "hook", "RCU", "cgroup.procs"):
        assert term.lower() in text.lower(), term


@pytest.mark.parametrize("path", [p for p in MAIN_PATH if re.match(r"0[1-7]-", name(p))], ids=name)
def test_a_labkit_call_is_shown_beside_the_standard_tool(path: str) -> None:
    """A '## The same with the standard tool' heading, then a cell that runs the tool and asserts."""
    cells = read(path).cells
    shown = [cells[i + 1] for i, c in enumerate(cells[:-1])
             if c.cell_type == "markdown" and c.source.startswith(STANDARD_TOOL_HEADING)]
    assert shown, f"no markdown cell starting {STANDARD_TOOL_HEADING!r}"
    for cell in shown:
        assert cell.cell_type == "code" and STANDARD_TOOLS.search(cell.source), cell.source[:200]
        assert re.search(r"^\s*assert\b", cell.source, re.MULTILINE), "the two views are not compared"
        assert not [o for o in cell.outputs if o.output_type == "error"]


@pytest.mark.parametrize("path", ALL, ids=name)
def test_figures_are_drawn_for_high_dpi_screens(path: str) -> None:
    nb = read(path)
    draws = any(o.get("data", {}).get("image/png") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if not draws:
        pytest.skip("draws no figure")
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert RETINA in first.source


@pytest.mark.parametrize("path", ALL, ids=name)
def test_saved_outputs_are_what_a_student_should_read(path: str) -> None:
    """No widget repr, no '# NBVAL' comment (nbval's cell tags instead), no wall of text."""
    for i, cell in enumerate(read(path).cells):
        if cell.cell_type != "code":
            continue
        assert not re.search(r"^# NBVAL_", cell.source, re.MULTILINE), f"cell {i}: use nbval's cell tags"
        for text in text_outputs(cell):
            assert not WIDGET_REPR.search(text), f"cell {i}: a widget's repr saved as output"
            assert text.count("\n") <= MAX_OUTPUT_LINES, f"cell {i}: {text.count(chr(10))} lines of output"
