"""Classroom exercises: the convention in every notebook, `labkit exercises build`, `labkit check`.

The student version of every notebook is really run (a Jupyter kernel, the real kernel
underneath): it must run to the end, and each of its checks must fail with its first hint.
No hint of an exercise contains its solution's key expression. Grading uses the solution's
check cells: a student's edited or deleted check cell, or a line "exercise N: passed"
printed elsewhere, does not pass.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import nbformat
import pytest

from conftest import REPO, labkit_cli
from labkit import exercises
from labkit.errors import LabkitError

NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "[0-9][0-9]-*.ipynb")))
PRINT_LINE = re.compile(r'print\(f"exercise (\d+):", check_exercise_(\d+)\(\)\)')


def names(paths: list[str]) -> list[str]:
    return [os.path.basename(p) for p in paths]


def exercises_of(path: str) -> list[tuple[int, str, str, str]]:
    """(N, task markdown, answer cell source, check cell source) of each exercise."""
    nb = nbformat.read(path, as_version=4)
    found, task = [], ""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            task += cell.source + "\n"
        elif exercises.BEGIN in cell.source:
            found.append((len(found) + 1, task, cell.source, nb.cells[index + 1].source))
            task = ""
        elif exercises.check_number(cell) is not None:
            task = ""
    return found


def normalized(text: str) -> str:
    """Lower case, one kind of quote, no space next to punctuation (as ast.unparse spaces it)."""
    text = re.sub(r"\s+", " ", text.replace("'", '"').lower())
    return re.sub(r" ?([^\w ]) ?", r"\1", text).strip()


def mentions(text: str, key: str) -> bool:
    """``key`` stands in ``text`` (both normalized) as a whole: not inside a longer word."""
    before = r"(?<![a-z0-9])" if key[:1].isalnum() else ""
    after = r"(?![a-z0-9])" if key[-1:].isalnum() else ""
    return re.search(before + re.escape(key) + after, text) is not None


TRIVIAL = (None, True, False, 0, 1, "")


def key_expressions(answer: str) -> set[str]:
    """What the solution writes: the right-hand side of each assignment (and the value of each
    return, and each call made for its effect) between the markers, each call and keyword
    argument in it, each string in it and each option=value word of a string (a shell
    command's bs=64M), normalized."""
    lines = answer.splitlines()
    stripped = [line.strip() for line in lines]
    begin, end = stripped.index(exercises.BEGIN), stripped.index(exercises.END)
    keys = set()
    for node in ast.walk(ast.parse(textwrap.dedent("\n".join(lines[begin + 1:end])))):
        called = isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)     # os.chdir("..")
        if not (called or isinstance(node, (ast.Assign, ast.AnnAssign, ast.Return))) or node.value is None:
            continue
        value = node.value
        if isinstance(value, ast.Constant):
            if value.value not in TRIVIAL:
                keys.add(str(value.value))
        elif not isinstance(value, (ast.Name, ast.Attribute)) and not (
                isinstance(value, ast.Call) and not value.args and not value.keywords):   # f(): an API's name
            keys.add(ast.unparse(value))
        for sub in ast.walk(value):
            if isinstance(sub, ast.Call) and (sub.args or sub.keywords):
                keys.add(ast.unparse(sub))
                if isinstance(sub.func, ast.Attribute):          # also without its module: Cgroup(...)
                    keys.add(ast.unparse(sub)[len(ast.unparse(sub.func.value)) + 1:])
            elif isinstance(sub, ast.keyword) and sub.arg:
                keys.add(f"{sub.arg}={ast.unparse(sub.value)}")
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str) and len(sub.value) > 2:
                keys.add(sub.value)
                keys.update(word for word in sub.value.split() if "=" in word)
    return {normalized(k) for k in keys}


def hints_of(check: str, number: int) -> list[str]:
    """The hints check_exercise_N returns, in source order; {} for each formatted value."""
    tree = ast.parse(check)
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f"check_exercise_{number}")
    hints = []
    for node in ast.walk(function):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant):
            hints.append((node.lineno, str(node.value.value)))
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.JoinedStr):
            hints.append((node.lineno, "".join(p.value if isinstance(p, ast.Constant) else "{}"
                                               for p in node.value.values)))
    return [text for _, text in sorted(hints) if text.startswith("hint: ")]


def only_report(stdout: str) -> dict:
    """The one notebook's report in `labkit check --json`'s output of one notebook."""
    [student] = json.loads(stdout)["students"].values()
    [report] = student["notebooks"]
    return report


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
def test_no_hint_contains_the_solutions_key_expression(path: str) -> None:
    """A key the task itself states (a name, a path it gives) is no answer; any other is."""
    leaks = []
    for number, task, answer, check in exercises_of(path):
        keys = {k for k in key_expressions(answer) if not mentions(normalized(task), k)}
        assert keys, f"exercise {number}: no key expression found in its solution"
        hints = hints_of(check, number)
        assert len(hints) >= 2, f"exercise {number}: a concept hint and a pointer to the man page or API"
        leaks += [(number, k, h) for h in hints for k in keys if mentions(normalized(h), k)]
    assert not leaks, "hints that give the answer: " + "; ".join(f"exercise {n}: {k!r} in {h!r}" for n, k, h in leaks)


WHERE_TO_READ = re.compile(r"then see: |\w\(\d\)|\.rst|labkit/")   # a man page, a kernel document, labkit's API


@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_a_later_hint_points_to_the_man_page_or_api(path: str) -> None:
    """The first hint names the concept; a later one says where to read."""
    bare = [n for n, _, _, check in exercises_of(path)
            if not any(WHERE_TO_READ.search(h) for h in hints_of(check, n)[1:])]
    assert not bare, f"exercises {bare}: no later hint names a man page, kernel document or labkit API"


def test_key_expressions_catch_an_answer_in_a_hint() -> None:
    """The test above can fail: today's kind of hint is caught, a concept hint is not."""
    answer = '### BEGIN SOLUTION\nquarter = Cgroup("nb06-ex1", cpu=0.25)\n### END SOLUTION'
    keys = key_expressions(answer)
    assert any(mentions(normalized("hint: so a quarter core is cpu=0.25"), k) for k in keys)
    assert any(mentions(normalized("hint: Cgroup('nb06-ex1', cpu = 0.25)"), k) for k in keys)
    assert not any(mentions(normalized("hint: cpu= is in CPUs (CFS bandwidth control)"), k) for k in keys)
    shell = key_expressions('### BEGIN SOLUTION\nhog = "dd if=/dev/zero of=/dev/null bs=64M count=1"\n### END SOLUTION')
    assert any(mentions(normalized("hint: dd bs=64M does"), k) for k in shell)


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
        checks = [c for c in nb.cells if exercises.check_number(c) is not None]
        assert checks and all(c.metadata.get("editable") is False and c.metadata.get("deletable") is False
                              for c in checks), "check cells are read-only (nbgrader's metadata)"
        assert not any("editable" in c.metadata for c in nb.cells if c not in checks), "answer cells stay editable"
        for cell in nb.cells:
            assert exercises.BEGIN not in cell.source and exercises.END not in cell.source
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
                python = [("#" + line) if line.lstrip().startswith(("%", "!")) else line   # IPython magics aside
                          for line in cell.source.splitlines()]
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
    nb = tiny_notebook("1/0", "x",
                       'def check_exercise_1() -> str:\n    return "passed"\nprint(f"exercise 1:", check_exercise_1())',
                       'def check_exercise_2() -> str:\n    return x\nprint(f"exercise 2:", check_exercise_2())')
    nb.cells[0].metadata["tags"] = ["raises-exception"]
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
                                 'def check_exercise_1() -> str:\n    return "passed"\n'
                                 'print(f"exercise 1:", check_exercise_1())'),
                   str(path))
    r = labkit_cli("check", "--timeout", "3", "--solutions", str(tmp_path), str(path), timeout=60)
    # The interrupted cell is reported; the grade is the exercises' (all passed: exit 0).
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[1].split()[1:] == [exercises.PASS, "1/1"], r.stdout
    assert "slow.ipynb: crashed: cell 0: KeyboardInterrupt" in r.stdout


def test_check_reports_a_solution_notebook_all_passed(no_leaks) -> None:
    path = os.path.join(REPO, "notebooks", "02-uts-and-ipc.ipynb")
    r = labkit_cli("check", path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[:2] == ["student    02.ex1  02.ex2  total",
                                         f"notebooks    {exercises.PASS}       {exercises.PASS}     2/2"], r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("2 of 2 exercises passed in 1 notebook(s)")


def test_check_refuses_a_notebook_without_its_solution(tmp_path) -> None:
    path = tmp_path / "mine.ipynb"
    nbformat.write(tiny_notebook('print("exercise 1: passed")'), str(path))
    r = labkit_cli("check", str(path))
    assert r.returncode == 125 and "no solution notebook mine.ipynb" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_solution_check_cells_replace_edited_and_deleted_ones() -> None:
    solution = tiny_notebook("answer = 1",
                             'def check_exercise_1() -> str:\n    return "passed" if answer == 2 else "hint: x"\n'
                             'print(f"exercise 1:", check_exercise_1())', "x = 1",
                             'def check_exercise_2() -> str:\n    return "hint: y"\n'
                             'print(f"exercise 2:", check_exercise_2())')
    student = nbformat.from_dict(solution)
    student.cells[1].source = 'print("exercise 1: passed")'               # edited
    del student.cells[3]                                                   # deleted
    student.cells.append(nbformat.v4.new_code_cell('print("exercise 2: passed")'))
    checks = exercises.with_solution_checks(student, solution)
    assert checks == {solution.cells[1].id: 1, solution.cells[3].id: 2}
    extra = ['print("exercise 2: passed")']
    assert [c.source for c in student.cells] == [c.source for c in solution.cells] + extra
    # Only the solution's check cells' own lines count: the student's extra cell printed "passed".
    said_by_cell = ["", "exercise 1: hint: x\n", "", "exercise 2: hint: y\n", "exercise 2: passed\n"]
    for cell, said in zip(student.cells, said_by_cell):
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=said)] if said else []
    report = exercises.grade("t.ipynb", student, checks)
    assert [(e.number, e.passed, e.hint) for e in report.exercises] == [(1, False, "x"), (2, False, "y")]


def test_edited_check_cell_is_graded_failed(tmp_path, no_leaks) -> None:
    """A student version whose check cells print "passed" by themselves: really run, still failed."""
    path = os.path.join(REPO, "notebooks", "02-uts-and-ipc.ipynb")
    student = os.path.join(str(tmp_path), os.path.basename(path))
    exercises.build(str(tmp_path), [path])
    nb = nbformat.read(student, as_version=4)
    first, second = [i for i, c in enumerate(nb.cells) if exercises.check_number(c) is not None]
    nb.cells[first].source = 'def check_exercise_1() -> str:\n    return "passed"\nprint("exercise 1: passed")'
    nb.cells[second] = nbformat.v4.new_code_cell('print("exercise 2: passed")')   # a new cell in its place
    nbformat.write(nb, student)
    r = labkit_cli("check", "--json", student, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    report = only_report(r.stdout)
    assert [(e["exercise"], e["passed"]) for e in report["exercises"]] == [(1, False), (2, False)]
    for e, (_, _, _, check) in zip(report["exercises"], exercises_of(path)):
        assert re.fullmatch(".*".join(map(re.escape, hints_of(check, e["exercise"])[0][len("hint: "):].split("{}"))),
                            e["hint"]), e


@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_student_notebook_runs_to_the_end_and_every_check_gives_its_hint(tmp_path, path: str, no_leaks) -> None:
    student = os.path.join(str(tmp_path), os.path.basename(path))
    exercises.build(str(tmp_path), [path])
    r = labkit_cli("check", "--json", student, timeout=1200)
    assert r.returncode == 1, r.stdout + r.stderr
    report = only_report(r.stdout)
    checks = sum("def check_exercise_" in c.source for c in nbformat.read(path, as_version=4).cells)
    assert [e["exercise"] for e in report["exercises"]] == list(range(1, checks + 1))
    for e, (_, _, _, check) in zip(report["exercises"], exercises_of(path)):
        assert not e["passed"], f"exercise {e['exercise']} passes on the stub"
        first = hints_of(check, e["exercise"])[0][len("hint: "):]
        assert re.fullmatch(".*".join(map(re.escape, first.split("{}"))), e["hint"]), \
            f"exercise {e['exercise']} left undone gives its first hint {first!r}, not {e['hint']!r}"
    assert report["crashed_cells"] == [], "the student version runs to the end"


# --- student versions with their answers filled are the solution notebooks -----------------

def filled_student_version(tmp_path, path: str) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode, int]:
    """(the student version of ``path`` built by `labkit exercises build`, the same with its
    answers filled from the solution by cell id, how many answers were filled)."""
    exercises.build(str(tmp_path), [path])
    student = nbformat.read(os.path.join(str(tmp_path), os.path.basename(path)), as_version=4)
    filled = nbformat.from_dict(student)
    return student, filled, exercises.fill_answers(filled, nbformat.read(path, as_version=4))


def code_cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    """(id, source, tags) of each code cell: what nbval runs and how it judges each."""
    return [(c.id, c.source, c.metadata.get("tags", [])) for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=names(NOTEBOOKS))
def test_a_student_version_with_its_answers_filled_is_the_solution(tmp_path, path: str) -> None:
    """Every code cell's id, source and tags are the solution's again, in order, and so is
    every markdown cell: nbval over the solution notebooks runs these very cells."""
    solution = nbformat.read(path, as_version=4)
    student, filled, count = filled_student_version(tmp_path, path)
    assert count == len(exercises_of(path)) >= 2
    assert code_cells(student) != code_cells(solution), "the student version has its answers stubbed"
    assert code_cells(filled) == code_cells(solution)
    assert [(c.cell_type, c.source) for c in filled.cells] == [(c.cell_type, c.source) for c in solution.cells]


def nbval(path: str) -> subprocess.CompletedProcess[str]:
    """nbval strict (--nbval, as ./lab test runs it) over one notebook, in its folder."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                           "--nbval-current-env", "--nbval-sanitize-with",
                           os.path.join(REPO, "notebooks", "nbval-sanitize.cfg"), path],
                          cwd=os.path.dirname(path), capture_output=True, text=True, timeout=600)


def with_outputs_of(nb: nbformat.NotebookNode, solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` with the solution's saved outputs, by cell id: what nbval compares each cell's run with."""
    saved = {c.id: c for c in solution.cells if c.cell_type == "code"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = saved[cell.id].outputs, saved[cell.id].execution_count
    return nb


def test_a_filled_student_version_passes_nbval_strict_and_a_stubbed_one_does_not(tmp_path, no_leaks) -> None:
    """Really run: the student version of 02 (locked check cells, the student's metadata), its
    answers filled, reproduces the solution's saved outputs under nbval strict. The same
    notebook with its answers left as stubs fails: nbval does compare what these cells print."""
    path = os.path.join(REPO, "notebooks", "02-uts-and-ipc.ipynb")
    solution = nbformat.read(path, as_version=4)
    student, filled, _ = filled_student_version(tmp_path / "built", path)
    os.makedirs(tmp_path / "filled")
    os.makedirs(tmp_path / "stubbed")
    nbformat.write(with_outputs_of(filled, solution), str(tmp_path / "filled" / os.path.basename(path)))
    nbformat.write(with_outputs_of(student, solution), str(tmp_path / "stubbed" / os.path.basename(path)))
    good = nbval(str(tmp_path / "filled" / os.path.basename(path)))
    assert good.returncode == 0 and " passed" in good.stdout and "failed" not in good.stdout, good.stdout[-3000:]
    bad = nbval(str(tmp_path / "stubbed" / os.path.basename(path)))
    assert bad.returncode == 1 and " failed" in bad.stdout, bad.stdout[-3000:]


# --- check: a class folder ------------------------------------------------------------------

def test_gradebook_columns_are_in_notebook_then_exercise_order() -> None:
    reports = [exercises.Report("x/10-a.ipynb", [exercises.Exercise(n, True) for n in (10, 2)], solution="10-a.ipynb"),
               exercises.Report("x/02-b.ipynb", [exercises.Exercise(1, False, "h")], solution="02-b.ipynb")]
    assert exercises.columns(reports) == ["02.ex1", "10.ex2", "10.ex10"]


def test_check_refuses_a_folder_without_notebooks(tmp_path) -> None:
    (tmp_path / "class" / "alice").mkdir(parents=True)
    r = labkit_cli("check", str(tmp_path / "class"))
    assert r.returncode == 125 and "no notebook in it nor in its subfolders" in r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_check_grades_a_class_folder_table_and_json(tmp_path, no_leaks) -> None:
    """submissions/alice has 02 done (answers filled from the solution) and a scratch
    Untitled.ipynb, submissions/bob has 02 as handed out. Really run, each from a clean kernel."""
    path = os.path.join(REPO, "notebooks", "02-uts-and-ipc.ipynb")
    name = os.path.basename(path)
    _, filled, _ = filled_student_version(tmp_path / "submissions" / "bob", path)
    os.makedirs(tmp_path / "submissions" / "alice")
    nbformat.write(filled, str(tmp_path / "submissions" / "alice" / name))
    nbformat.write(nbformat.v4.new_notebook(), str(tmp_path / "submissions" / "alice" / "Untitled.ipynb"))
    first = [hints_of(check, n)[0][len("hint: "):] for n, _, _, check in exercises_of(path)]

    r = labkit_cli("check", str(tmp_path / "submissions"), timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    P, F = exercises.PASS, exercises.FAIL
    lines = r.stdout.splitlines()
    assert lines[:4] == ["student  02.ex1  02.ex2  total",
                         f"alice      {P}       {P}     2/2",
                         f"bob        {F}       {F}     0/2", ""], r.stdout
    for n, (line, hint) in enumerate(zip(lines[4:6], first), 1):
        assert line.startswith(f"bob 02.ex{n}: ") and re.fullmatch(
            ".*".join(map(re.escape, hint.split("{}"))), line[len(f"bob 02.ex{n}: "):]), (line, hint)
    assert lines[6:] == ["2 of 4 exercises passed in 2 notebook(s); 1 notebook(s) complete"], r.stdout
    assert "skipped" in r.stderr and "Untitled.ipynb" in r.stderr
    assert "[1/2] alice:" in r.stderr and "[2/2] bob:" in r.stderr and "[2/2] 0 of 2 passed" in r.stderr

    r = labkit_cli("check", "--json", str(tmp_path / "submissions"), timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    book = json.loads(r.stdout)
    assert book["columns"] == ["02.ex1", "02.ex2"]
    assert list(book["students"]) == ["alice", "bob"]
    for student, passed in (("alice", True), ("bob", False)):
        got = book["students"][student]
        assert (got["passed"], got["total"]) == ((2 if passed else 0), 2)
        [report] = got["notebooks"]
        assert report["notebook"] == str(tmp_path / "submissions" / student / name)
        assert report["solution"] == name and report["crashed_cells"] == []
        assert [(e["exercise"], e["passed"]) for e in report["exercises"]] == [(1, passed), (2, passed)]
        assert all(bool(e["hint"]) != passed for e in report["exercises"])

    # One student's folder is graded as that student; all passed is exit 0.
    r = labkit_cli("check", str(tmp_path / "submissions" / "alice"), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[1] == f"alice      {P}       {P}     2/2"
