"""Classroom exercises: the convention in every notebook, `labkit exercises build`, `labkit check`.

The student version of every notebook is really run (a Jupyter kernel, the real kernel
underneath): it must run to the end, and each of its checks must fail with its hint.
"""

from __future__ import annotations

import glob
import json
import os
import re

import nbformat
import pytest

from conftest import REPO, labkit_cli
from labkit import exercises
from labkit.errors import LabkitError

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "[0-9][0-9]-*.ipynb")))
PRINT_LINE = re.compile(r'print\(f"exercise (\d+):", check_exercise_(\d+)\(\)\)')


def names(paths: list[str]) -> list[str]:
    return [os.path.basename(p) for p in paths]


def tiny_notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    return nb


# --- the convention, in every notebook ------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_every_answer_is_followed_by_one_check_cell(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    answers = [i for i, c in enumerate(code) if exercises.BEGIN in c.source]
    assert len(answers) >= 2, "at least two exercises a notebook"
    for n, i in enumerate(answers, 1):
        answer, check = code[i], code[i + 1]
        assert answer.source.count(exercises.BEGIN) == answer.source.count(exercises.END) == 1
        assert "check_exercise" not in answer.source, "the answer cell is not a check cell"
        assert f"def check_exercise_{n}() -> str:" in check.source
        assert PRINT_LINE.findall(check.source.strip().splitlines()[-1]) == [(str(n), str(n))]
        assert exercises.BEGIN not in check.source and exercises.END not in check.source
    # The markers appear only in the answer cells (markdown included).
    marked = [c for c in nb.cells if exercises.BEGIN in c.source or exercises.END in c.source]
    assert len(marked) == len(answers)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_solution_notebook_outputs_say_passed(path: str) -> None:
    """The committed (executed) solution notebook printed `exercise N: passed` for each."""
    report = exercises.grade(path, nbformat.read(path, as_version=4))
    assert report.exercises and report.passed, exercises.format_report(report)
    assert not report.crashed


# --- build: student versions --------------------------------------------------------------

def test_stub_keeps_indentation_and_drops_markers() -> None:
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n    raise NotImplementedError"
    assert exercises.stub_answers(source) == "def f(x):\n    ...\n    raise NotImplementedError"
    assert exercises.stub_answers("### BEGIN SOLUTION\nanswer = 4\n### END SOLUTION") == "..."


@pytest.mark.parametrize("source", ["### BEGIN SOLUTION\nx = 1", "x = 1\n### END SOLUTION",
                                    "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_unpaired_markers_are_refused(source: str) -> None:
    with pytest.raises(LabkitError):
        exercises.stub_answers(source)


def test_build_writes_every_student_notebook(tmp_path) -> None:
    r = labkit_cli("exercises", "build", str(tmp_path / "class"))
    assert r.returncode == 0, r.stderr
    built = sorted(glob.glob(str(tmp_path / "class" / "*.ipynb")))
    assert names(built) == names(NOTEBOOKS)
    for path in built:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["labkit"] == {"student_version": True, "solution": os.path.basename(path)}
        for cell in nb.cells:
            assert exercises.BEGIN not in cell.source and exercises.END not in cell.source
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
                python = [("#" + l) if l.lstrip().startswith(("%", "!")) else l   # IPython magics aside
                          for l in cell.source.splitlines()]
                compile("\n".join(python), path, "exec")                       # still valid Python
    solution = nbformat.read(NOTEBOOKS[1], as_version=4)
    assert "labkit" not in solution.metadata, "the solution notebooks are left as they were"


def test_build_refuses_to_overwrite_the_solutions() -> None:
    r = labkit_cli("exercises", "build", os.path.join(REPO, "notebooks"))
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_build_refuses_an_outdir_that_is_a_file(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    r = labkit_cli("exercises", "build", str(tmp_path / "file"), NOTEBOOKS[0])
    assert r.returncode == 125 and "is not a directory" in r.stderr and "Traceback" not in r.stderr


def test_build_refuses_a_notebook_with_unpaired_markers(tmp_path) -> None:
    bad = tmp_path / "bad.ipynb"
    nbformat.write(tiny_notebook("### BEGIN SOLUTION\nanswer = 1"), str(bad))
    r = labkit_cli("exercises", "build", str(tmp_path / "out"), str(bad))
    assert r.returncode == 125 and "without" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists(), "nothing written when a notebook is refused"


# --- check: bad input -----------------------------------------------------------------------

@pytest.mark.parametrize("content", [None, "not json", "{}"])
def test_check_refuses_what_is_not_a_notebook(tmp_path, content: str | None) -> None:
    path = tmp_path / "x.ipynb"
    if content is not None:
        path.write_text(content)
    r = labkit_cli("check", str(path))
    assert r.returncode == 125, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert str(path) in r.stderr


def test_check_refuses_a_bad_timeout() -> None:
    r = labkit_cli("check", "--timeout", "0", NOTEBOOKS[0])
    assert r.returncode == 125 and "--timeout" in r.stderr


# --- check: grading ---------------------------------------------------------------------------

def test_grade_reads_results_crashes_and_silent_checks() -> None:
    nb = tiny_notebook("# NBVAL_RAISES_EXCEPTION\n1/0", "x",
                       'def check_exercise_1() -> str:\n    return "passed"\nprint(f"exercise 1:", check_exercise_1())',
                       'def check_exercise_2() -> str:\n    return x\nprint(f"exercise 2:", check_exercise_2())')
    error = nbformat.v4.new_output("error", ename="NameError", evalue="name 'x' is not defined", traceback=[])
    nb.cells[0].outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="", traceback=[])]
    nb.cells[1].outputs = [error]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="exercise 1: passed\n")]
    nb.cells[3].outputs = [error]
    report = exercises.grade("t.ipynb", nb)
    assert [(e.number, e.passed) for e in report.exercises] == [(1, True), (2, False)]
    assert "did not finish (NameError" in report.exercises[1].hint
    assert report.crashed == ["cell 1: NameError: name 'x' is not defined",
                              "cell 3: NameError: name 'x' is not defined"], "the expected error is not a crash"
    assert not report.passed


def test_grade_reads_a_result_line_the_kernel_sent_in_two_pieces() -> None:
    """print("exercise 2:", hint) makes several writes; the kernel may flush between them."""
    nb = tiny_notebook('def check_exercise_2() -> str:\n    return "hint: count the shell"\n'
                       'print(f"exercise 2:", check_exercise_2())')
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="exercise 2:"),
                           nbformat.v4.new_output("stream", name="stdout", text=" hint: count the shell\n")]
    [exercise] = exercises.grade("t.ipynb", nb).exercises
    assert (exercise.number, exercise.passed, exercise.hint) == (2, False, "count the shell")


def test_check_interrupts_a_cell_past_the_timeout_and_goes_on(tmp_path) -> None:
    path = tmp_path / "slow.ipynb"
    nbformat.write(tiny_notebook("import time\ntime.sleep(60)",
                                 'def check_exercise_1() -> str:\n    return "passed"\nprint(f"exercise 1:", check_exercise_1())'),
                   str(path))
    r = labkit_cli("check", "--timeout", "3", str(path), timeout=60)
    # The interrupted cell is reported; the grade is the exercises' (all passed: exit 0).
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exercise 1: passed" in r.stdout and "crashed: cell 0: KeyboardInterrupt" in r.stdout


def test_check_reports_a_solution_notebook_all_passed(no_leaks) -> None:
    path = os.path.join(REPO, "notebooks", "02-uts-and-ipc.ipynb")
    r = labkit_cli("check", path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exercise 1: passed" in r.stdout and "exercise 2: passed" in r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("2 of 2 exercises passed in 1 notebook(s)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_student_notebook_runs_to_the_end_and_every_check_gives_its_hint(tmp_path, path: str, no_leaks) -> None:
    student = os.path.join(str(tmp_path), os.path.basename(path))
    exercises.build(str(tmp_path), [path])
    r = labkit_cli("check", "--json", student, timeout=1200)
    assert r.returncode == 1, r.stdout + r.stderr
    [report] = json.loads(r.stdout)["notebooks"]
    checks = sum("def check_exercise_" in c.source for c in nbformat.read(path, as_version=4).cells)
    assert [e["exercise"] for e in report["exercises"]] == list(range(1, checks + 1))
    for e in report["exercises"]:
        assert not e["passed"], f"exercise {e['exercise']} passes on the stub"
        assert len(e["hint"]) > 20 and "did not finish" not in e["hint"], e
    assert report["crashed_cells"] == [], "the student version runs to the end"
