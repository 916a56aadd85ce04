"""The documentation cannot rot: every fenced block of README.md and docs/*.md is exercised.

- ```python blocks run, page by page, in order, in one namespace per page (a later block may use
  the names of an earlier one), in a temporary working folder, on the CPU with one torch thread.
  A failure names the page and the line of the block (tracebacks point into the .md file).
  A ```text block right after a python block, preceded by the line
  ``<!-- docs-test: output -->``, is that block's output: its lines must appear, in order, in
  what the block printed ("..." lines skip any number of lines). A page whose examples use the
  emulator is skipped in a build without it (TBPTT_NO_EMULATION=1).
- ```console blocks: the lines starting with "$ " are commands (the rest is output, ignored);
  ```bash / ```sh blocks: every line that is not a comment is a command. Commands are checked,
  not run: `make X` needs a target X in the Makefile; `python -m tbptt_cuda...` a module file
  of this checkout (a package: its __main__.py); `python path.py` a script that exists; where
  the program parses arguments, `... --help` (with the command's leading positional words,
  e.g. a demo's subcommand) must exit 0 and list every --option the command uses (our modules
  run in this process, scripts in subprocesses); `python -m pytest PATHS` paths that exist;
  `bash script` a script that exists; VAR=value prefixes a variable that the project's sources
  read (or one of EXTERNAL_ENV). Any other command must be one of
  EXTERNAL_COMMANDS, written out in full (and each of those must still be used by a page).
- ```text and ``` (no language) blocks: output and tables, not executed.
- Any other language fails, so that no new kind of block slips through unchecked.
- Relative links and images in the pages point at files that exist and are not git-ignored;
  a link to a section of a page names a heading that exists.
"""
import contextlib
import functools
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PYTHON, SHELL, TEXT = {"python"}, {"console", "bash", "sh"}, {"text", ""}
OUTPUT_MARKER = "<!-- docs-test: output -->"

# Commands the docs give that are neither ours nor make / python / bash on our files: written
# out in full (after `$ `, without trailing comments).
EXTERNAL_COMMANDS = {
    "pip install --no-build-isolation -e .",        # building into one's own environment
    "pip install --no-build-isolation dist/tbptt_cuda-*.tar.gz",  # the sdist (docs/development.md)
    "torchrun --nproc-per-node 2 train.py",         # several processes (docs/user_guide.md)
}
# Environment variables the docs set that our sources do not read themselves (torch's, the
# C++ toolchain's, OpenMP's).
EXTERNAL_ENV = {"TORCH_CUDA_ARCH_LIST", "MAX_JOBS", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES"}


def _rel(path):
    return str(Path(path).relative_to(ROOT))


# ---------------------------------------------------------------------------------------------
# parsing the pages

class Block:
    def __init__(self, page, line, lang, text, marker):
        self.page, self.line, self.lang, self.text, self.marker = page, line, lang, text, marker

    @property
    def where(self):
        return f"{_rel(self.page)}:{self.line}"


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


@functools.lru_cache(maxsize=None)
def blocks_of(page):
    """The fenced blocks of a page, in order; `line` is the 1-based line of the opening fence."""
    lines = Path(page).read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info = match.group(1), match.group(2).strip()
        lang = info.split()[0].lower() if info else ""
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start, i = i, i + 1
        body = []
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and set(lines[i].strip()) == {fence[0]}):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{_rel(page)}:{start + 1}: code fence never closed")
        blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n", previous))
        i += 1
    return tuple(blocks)


def all_blocks():
    return [block for page in PAGES for block in blocks_of(page)]


def test_pages_exist():
    assert (ROOT / "docs" / "index.md").exists()
    assert len(PAGES) > 2


def test_every_block_has_a_checked_language():
    unknown = [f"{b.where}: ```{b.lang}" for b in all_blocks()
               if b.lang not in PYTHON | SHELL | TEXT]
    assert not unknown, (
        "code blocks in a language tests/test_docs.py does not check (use python, console, "
        "bash, sh, text or none): " + ", ".join(unknown))


def test_output_markers_follow_python_blocks():
    for page in PAGES:
        blocks = blocks_of(page)
        for k, block in enumerate(blocks):
            if block.marker == OUTPUT_MARKER:
                assert block.lang in TEXT, \
                    f"{block.where}: the output marker precedes a ```{block.lang} block"
                assert k > 0 and blocks[k - 1].lang in PYTHON, \
                    f"{block.where}: an output block must follow a python block"


# ---------------------------------------------------------------------------------------------
# python blocks: executed

PYTHON_PAGES = [page for page in PAGES if any(b.lang in PYTHON for b in blocks_of(page))]


def _expect_output(block, expected, printed):
    """Lines of `expected` (a text block) appear in order in `printed`; '...' skips lines."""
    got = [line.rstrip() for line in printed.splitlines()]
    position = 0
    for want in (line.rstrip() for line in expected.splitlines()):
        if want in ("", "..."):
            continue
        while position < len(got) and got[position] != want:
            position += 1
        if position == len(got):
            pytest.fail(f"{block.where}: the output block after this python block shows\n  {want}\n"
                        f"which the block did not print (in this order). It printed:\n{printed}")
        position += 1


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_rel)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    import tbptt_cuda

    if not tbptt_cuda.build_info()["cuda_emulation"] and any(
            "emulat" in b.text for b in blocks_of(page) if b.lang in PYTHON):
        pytest.skip("built without the emulated kernels (TBPTT_NO_EMULATION=1); this page's "
                    "examples run the CUDA kernels under the emulator")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the examples are small; a busy CI core makes OpenMP teams spin
    torch.manual_seed(0)
    namespace = {"__name__": "docs_" + Path(page).stem}
    blocks = blocks_of(page)
    try:
        for k, block in enumerate(blocks):
            if block.lang not in PYTHON:
                continue
            # pad with newlines so that tracebacks give the line numbers of the .md file
            code = compile("\n" * block.line + block.text, str(page), "exec")
            printed = io.StringIO()
            try:
                with contextlib.redirect_stdout(printed):
                    exec(code, namespace)  # noqa: S102  (the docs' own examples)
            except Exception as error:  # noqa: BLE001
                trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                pytest.fail(f"{block.where}: the python block starting at line {block.line} "
                            f"raised {type(error).__name__}: {error}\n\n{trace}\n"
                            f"It printed:\n{printed.getvalue()}")
            finally:
                sys.stdout.write(printed.getvalue())
            after = blocks[k + 1] if k + 1 < len(blocks) else None
            if after is not None and after.marker == OUTPUT_MARKER:
                _expect_output(block, after.text, printed.getvalue())
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# shell blocks: each command checked

def _commands(block):
    """(line, command) of a console / bash / sh block, continuation lines joined."""
    found, pending, first = [], "", None
    for offset, raw in enumerate(block.text.splitlines(), start=1):
        line = raw.strip()
        if not pending:
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:].strip()
            elif not line or line.startswith("#"):
                continue
            elif line.startswith("$ "):
                line = line[2:].strip()
            first = block.line + offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        found.append((first, pending + line))
        pending = ""
    assert not pending, f"{block.where}: a command ends with a line continuation"
    return found


SHELL_COMMANDS = [(block, line, command) for block in all_blocks() if block.lang in SHELL
                  for line, command in _commands(block)]


@functools.lru_cache(maxsize=None)
def makefile_targets():
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-][A-Za-z0-9_.\- ]*):(?!=)", line)
        if match and not line.startswith((".PHONY", "\t")):
            targets.update(match.group(1).split())
    return targets


@functools.lru_cache(maxsize=None)
def project_sources():
    """The text of the files whose environment variables a command may set."""
    files = [ROOT / "Makefile", ROOT / "setup.py", ROOT / "pyproject.toml"]
    for folder, patterns in (("tbptt_cuda", ("*.py",)), ("scripts", ("*",)), ("bench", ("*.py",)),
                             ("csrc", ("*.h", "*.cpp", "*.cu", "*.cuh")), (".ci", ("*",))):
        for pattern in patterns:
            files += (ROOT / folder).rglob(pattern)
    return "\n".join(f.read_text(errors="replace") for f in files if f.is_file())


def _check_env(name, where):
    assert name in EXTERNAL_ENV or re.search(rf"\b{re.escape(name)}\b", project_sources()), \
        f"{where}: the docs set {name}, which no source of the project reads"


def _parses_arguments(path):
    path = Path(path)
    files = path.parent.glob("*.py") if path.name == "__main__.py" else [path]
    return any("ArgumentParser" in f.read_text() for f in files)


def _split_commands(tokens):
    parts, current = [], []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            parts.append(current)
            current = []
        else:
            current.append(token)
    return [p for p in parts + [current] if p]


def check_command(command, where):
    """Asserts what can be known about `command` without running it; returns the `--help`
    probes to run: (argv after the interpreter, options the command uses)."""
    probes = []
    for words in _split_commands(shlex.split(command, comments=True)):
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            _check_env(words[0].split("=")[0], where)
            words = words[1:]
        assert words, f"{where}: no command in {command!r}"
        program, args = words[0], words[1:]
        if program == "export":
            for arg in args:
                _check_env(arg.split("=")[0], where)
        elif program == "make":
            for arg in args:
                if "=" in arg:
                    _check_env(arg.split("=")[0], where)
                elif not arg.startswith("-"):
                    assert arg in makefile_targets(), \
                        f"{where}: `make {arg}`: the Makefile has no target {arg!r}"
        elif program in ("python", "python3") or program.endswith("/python"):
            probes += _check_python(words, args, where)
        elif program in ("bash", "sh"):
            script = next(a for a in args if not a.startswith("-"))
            assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
        else:
            text = " ".join(words)
            assert text in EXTERNAL_COMMANDS, (
                f"{where}: `{text}` is not a command of this project; if the docs mean it, "
                "add it to EXTERNAL_COMMANDS in tests/test_docs.py")
    return probes


def _check_python(words, args, where):
    while args and args[0] in ("-u", "-P", "-O", "-B"):
        args = args[1:]
    assert args, f"{where}: `python` with nothing to run"
    if args[0] == "-c":
        compile(args[1], where, "exec")
        return []
    if args[0] == "-m":
        module, rest = args[1], args[2:]
        if module == "pytest":
            skip = False
            for arg in rest:
                if skip:
                    skip = False
                elif arg in ("-m", "-k", "-p", "-c", "-n"):
                    skip = True
                elif not arg.startswith("-"):
                    path = arg.split("::")[0]
                    assert (ROOT / path).exists(), f"{where}: pytest path {path} does not exist"
            return []
        if not module.startswith("tbptt_cuda"):
            text = " ".join(words)
            assert text in EXTERNAL_COMMANDS, (
                f"{where}: `{text}` runs a module that is not ours; if the docs mean it, add it "
                "to EXTERNAL_COMMANDS in tests/test_docs.py")
            return []
        # the module's file in this checkout (not whichever copy of the package is installed)
        base = ROOT.joinpath(*module.split("."))
        if (base / "__init__.py").is_file():  # a package: python -m runs its __main__
            source = base / "__main__.py"
            assert source.is_file(), f"{where}: the package {module} has no __main__"
        else:
            source = base.with_suffix(".py")
            assert source.is_file(), f"{where}: no module {module} ({_rel(source)})"
        target = ["-m", module]
    else:
        script, rest = args[0], args[1:]
        assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
        target, source = [script], ROOT / script
    if not _parses_arguments(source):
        return []
    positional = []
    for arg in rest:
        if arg.startswith("-"):
            break
        positional.append(arg)
    options = sorted({arg.split("=")[0] for arg in rest if arg.startswith("--")})
    return [(tuple(target + positional + ["--help"]), tuple(options))]


def _help_in_process(argv):
    """`python -m tbptt_cuda... --help` run in this process (torch is already imported here):
    (exit status, output)."""
    module, args = argv[1], list(argv[2:])
    output, saved = io.StringIO(), sys.argv
    sys.argv = [f"python -m {module}"] + args
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        status = 0
    except SystemExit as done:
        status = 0 if done.code is None else done.code if isinstance(done.code, int) else 1
        if isinstance(done.code, str):
            output.write(done.code)
    finally:
        sys.argv = saved
    return status, output.getvalue()


@functools.lru_cache(maxsize=None)
def help_outputs():
    """Runs every distinct `--help` probe of the pages: our modules in this process, scripts in
    subprocesses a few at a time. {argv: (exit status, output)}."""
    probes = set()
    for block, line, command in SHELL_COMMANDS:
        with contextlib.suppress(AssertionError, StopIteration, ValueError):
            probes.update(argv for argv, _ in check_command(command, f"{_rel(block.page)}:{line}"))
    env = dict(os.environ, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    scripts = sorted(argv for argv in probes if argv[0] != "-m")
    running = {argv: subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for argv in scripts}
    results = {argv: _help_in_process(argv) for argv in sorted(probes) if argv[0] == "-m"}
    for argv, process in running.items():
        out, _ = process.communicate(timeout=120)
        results[argv] = (process.returncode, out)
    return results


@pytest.mark.parametrize("block,line,command", SHELL_COMMANDS,
                         ids=[f"{_rel(b.page)}:{line}: {c}" for b, line, c in SHELL_COMMANDS])
def test_shell_command(block, line, command):
    where = f"{_rel(block.page)}:{line}"
    for argv, options in check_command(command, where):
        rc, out = help_outputs()[argv]
        shown = "python " + " ".join(argv)
        assert rc == 0, f"{where}: `{shown}` exited {rc}:\n{out}"
        for option in options:
            assert re.search(rf"{re.escape(option)}(?![\w-])", out), \
                f"{where}: `{command}` uses {option}, which `{shown}` does not list:\n{out}"


def test_external_commands_are_all_used():
    used = set()
    for _, _, command in SHELL_COMMANDS:
        for words in _split_commands(shlex.split(command, comments=True)):
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words = words[1:]
            used.add(" ".join(words))
    assert EXTERNAL_COMMANDS <= used, f"no page uses {sorted(EXTERNAL_COMMANDS - used)}: drop them"


# ---------------------------------------------------------------------------------------------
# links

def _slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _prose(page):
    """The page without its fenced blocks, inline code spans emptied."""
    lines, skip = [], set()
    for block in blocks_of(page):
        skip.update(range(block.line, block.line + block.text.count("\n") + 2))
    for number, line in enumerate(Path(page).read_text(encoding="utf-8").splitlines(), start=1):
        if number not in skip:
            lines.append(re.sub(r"`[^`]*`", "``", line))
    return lines


@functools.lru_cache(maxsize=None)
def _raw_headings(page):
    skip = set()
    for block in blocks_of(page):
        skip.update(range(block.line, block.line + block.text.count("\n") + 2))
    seen, result = {}, set()
    for number, line in enumerate(Path(page).read_text(encoding="utf-8").splitlines(), start=1):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and number not in skip:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
                   r"|^\s*\[[^\]]+\]:\s*(\S+)|(?:src|href)=\"([^\"]+)\"")


def _links(page):
    for line in _prose(page):
        for match in _LINK.finditer(line):
            yield next(g for g in match.groups() if g)


def _ignored_by_git(paths):
    if not paths or not (ROOT / ".git").exists():
        return set()
    result = subprocess.run(["git", "check-ignore", "--stdin"], cwd=ROOT, text=True,
                            input="\n".join(paths), capture_output=True)
    return set(result.stdout.split())


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    problems, files = [], []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.\-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (Path(page).parent / path).resolve() if path else Path(page)
        if not resolved.exists():
            problems.append(f"{target}: no such file")
            continue
        if ROOT not in resolved.parents and resolved != ROOT:
            problems.append(f"{target}: outside the repository")
            continue
        if resolved.is_file():
            files.append(str(resolved.relative_to(ROOT)))
        if anchor and resolved.suffix == ".md" and anchor not in _raw_headings(resolved):
            problems.append(f"{target}: {_rel(resolved)} has no heading with anchor #{anchor}")
    ignored = _ignored_by_git(files)
    problems += [f"{f}: git-ignored (absent from a fresh checkout)" for f in sorted(ignored)]
    assert not problems, f"{_rel(page)}: broken links:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------
# structure

def test_readme_is_short_and_links_the_docs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 250, "README.md: keep it under 250 lines; move detail to docs/"
    assert "docs/index.md" in text


def test_index_lists_every_page():
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    missing = [p.name for p in PAGES if p.parent.name == "docs" and p.name != "index.md"
               and f"({p.name}" not in index]
    assert not missing, f"docs/index.md does not link {missing}"


def test_api_page_names_every_public_name():
    import tbptt_cuda
    import tbptt_cuda.data
    import tbptt_cuda.train

    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    spans = " ".join(re.findall(r"`([^`]*)`", api))
    public = set(tbptt_cuda.__all__) | set(tbptt_cuda.data.__all__) | {
        name for name in vars(tbptt_cuda.train) if not name.startswith("_")
        and getattr(getattr(tbptt_cuda.train, name), "__module__", None) == "tbptt_cuda.train"}
    missing = sorted(name for name in public if not re.search(rf"\b{re.escape(name)}\b", spans))
    assert not missing, f"docs/api.md does not mention {missing}"
