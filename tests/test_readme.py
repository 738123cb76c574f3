"""Every command example in the README's ```bash blocks runs as written, on toyland, through the
installed `ovbench` executable - or says what it needs.

How the README is read:

- Each non-blank, non-comment line of a ```bash block is one command; its trailing `# ...`
  comment is not part of it.
- A command whose comment holds `needs: WHAT` needs something these tests do not have (the real
  datasets, real weights, GPUs, the network, quiet cores for a measurement): it is listed by
  `test_marked_examples_are_listed` (run with -s to see the list) and not run.
- Every other command must be an `ovbench ...` line or an `export NAME=VALUE` line (which sets
  NAME for the commands after it), and every such `ovbench` line must exit 0.
- A ```yaml block whose first line is `# NAME.yaml` is a file the examples use: it is written,
  verbatim, into the working folder the commands run in (a fresh folder outside the repository).
- For a dataset spec among those files (one with `image_dir`), a small dataset in that folder
  format (PNG images, masks of class ids) is generated under every `--data-root` the runnable
  commands name (`~/data` in the README).

How the commands run: one after another in README order (a command that appears twice runs
once), each through `bash -c` so that `~` expands, with HOME a temporary folder,
OVBENCH_HOME=$HOME/.ovbench (so `ovbench table` renders what the examples before it recorded),
HF_HUB_OFFLINE=1, and the executable pip installed next to this interpreter first on PATH.

Shortened, and only this: every `ovbench run` line that trains (not `--protocol zeroshot`, not
`--resume`) runs with `train.iters=2` appended - the main job `ovbench run --method gsnet
--protocol scratch` included; `.ci/run` runs the main job unshortened. The main job also gets
`--run-id ID`, ID being the run the README's `--resume` example names, so that example continues
a real run (a finished one: it says so and exits 0).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cli_process import OVBENCH, REPO, cli_env

README = REPO / "README.md"
MAIN_JOB = "ovbench run --method gsnet --protocol scratch"
SHORTEN = "train.iters=2"
NEEDS = re.compile(r"\bneeds:\s*(.*\S)")
EXPORT = re.compile(r"^export\s+([A-Za-z_][A-Za-z0-9_]*)=(\S*)$")
FENCE = re.compile(r"^```(\S*)\s*$")
FILE_HEADER = re.compile(r"^#\s*(\S+\.ya?ml)\s*$")


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based line of the first line inside the fence
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Example:
    command: str
    comment: str
    line: int

    @property
    def needs(self) -> str | None:
        found = NEEDS.search(self.comment)
        return found.group(1) if found else None

    @property
    def is_ovbench(self) -> bool:
        return self.command.split()[0] == "ovbench"

    @property
    def export(self) -> tuple[str, str] | None:
        found = EXPORT.match(self.command)
        return (found.group(1), found.group(2)) if found else None


def blocks(text: str) -> list[Block]:
    found, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"README.md:{i + 1}: unclosed code block"
        found.append(Block(fence.group(1), i + 2, tuple(lines[i + 1 : end])))
        i = end + 1
    return found


def split_comment(line: str) -> tuple[str, str]:
    """(command, comment): the comment starts at a `#` after whitespace, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1 :].strip()
    return line.strip(), ""


def examples(text: str) -> list[Example]:
    found = []
    for block in blocks(text):
        if block.lang != "bash":
            continue
        for offset, raw in enumerate(block.lines):
            assert not raw.rstrip().endswith("\\"), f"README.md:{block.line + offset}: keep each example on one line"
            command, comment = split_comment(raw)
            if command:
                found.append(Example(command, comment, block.line + offset))
    return found


def yaml_files(text: str) -> dict[str, str]:
    """The files the README defines: ```yaml blocks whose first line is `# NAME.yaml`."""
    files = {}
    for block in blocks(text):
        header = FILE_HEADER.match(block.lines[0]) if block.lang == "yaml" and block.lines else None
        if header:
            files[header.group(1)] = "\n".join(block.lines) + "\n"
    return files


TEXT = README.read_text(encoding="utf-8")
EXAMPLES = examples(TEXT)
MARKED = [e for e in EXAMPLES if e.needs]
RUNNABLE = [e for e in EXAMPLES if not e.needs and (e.is_ovbench or e.export)]
#: each runnable ovbench command once, where it first appears
UNIQUE_OVBENCH = list({e.command: e for e in reversed(RUNNABLE) if e.is_ovbench}.values())
UNIQUE_OVBENCH.sort(key=lambda e: e.line)


def resume_id() -> str | None:
    for example in RUNNABLE:
        found = re.search(r"--resume\s+(\S+)", example.command)
        if found:
            return found.group(1)
    return None


def as_run(command: str) -> str:
    """The command line as these tests run it (the shortening the module docstring describes)."""
    words = shlex.split(command)
    if words[:2] != ["ovbench", "run"] or "--resume" in words:
        return command
    protocol = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--protocol", "-p")), "scratch")
    if protocol == "zeroshot":
        return command
    extra = f" --run-id {resume_id()}" if command == MAIN_JOB and resume_id() else ""
    return f"{command}{extra} {SHORTEN}"


# ----------------------------------------------------------------------------- running


def write_folder_dataset(spec: dict, root: Path, count: int = 3, size: int = 96) -> None:
    """A few image/mask pairs in the spec's folder format: RGB PNGs, masks of class ids."""
    classes = spec.get("class_names") or spec["vocabulary"]
    image_dir, mask_dir = root / spec["image_dir"], root / spec["mask_dir"]
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in range(count):
        # blocks of one class each, coloured by class, so a mask is a plausible segmentation
        cells = rng.integers(0, len(classes), size=(4, 4))
        mask = np.kron(cells, np.ones((size // 4, size // 4), dtype=np.int64)).astype(np.uint8)
        palette = rng.integers(0, 256, size=(len(classes), 3))
        image = (palette[mask] + rng.integers(-20, 21, size=(size, size, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(image, "RGB").save(image_dir / f"tile_{n}{spec.get('image_suffix', '.png')}")
        Image.fromarray(mask, "L").save(mask_dir / f"tile_{n}{spec.get('mask_suffix', '.png')}")


class Session:
    """The README's runnable commands, run in order in one working folder and one OVBENCH_HOME."""

    def __init__(self, base: Path):
        self.home, self.work = base / "home", base / "work"
        self.home.mkdir()
        self.work.mkdir()
        self.env = cli_env(self.home / ".ovbench", HOME=str(self.home))
        self.env["PATH"] = f"{Path(OVBENCH).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.done: dict[str, subprocess.CompletedProcess] = {}
        self.position = 0
        specs = []
        for name, content in yaml_files(TEXT).items():
            (self.work / name).write_text(content, encoding="utf-8")
            loaded = yaml.safe_load(content)
            if isinstance(loaded, dict) and "image_dir" in loaded:
                specs.append(loaded)
        for root in self.data_roots():
            for spec in specs:
                write_folder_dataset(spec, root)

    def data_roots(self) -> set[Path]:
        roots = set()
        for example in RUNNABLE:
            for found in re.finditer(r"--data-root[ =](\S+)", example.command):
                given = found.group(1)
                path = self.home / given[2:] if given.startswith("~/") else Path(given)
                roots.add(path if path.is_absolute() else self.work / path)
        return roots

    def result(self, command: str) -> subprocess.CompletedProcess:
        """Runs every runnable command up to and including `command` (once each), in order."""
        while command not in self.done:
            example = RUNNABLE[self.position]
            self.position += 1
            if example.export:
                name, value = example.export
                self.env[name] = value
            elif example.command not in self.done:
                self.done[example.command] = subprocess.run(
                    ["bash", "-c", as_run(example.command)], capture_output=True, text=True, env=self.env,
                    cwd=self.work, timeout=900, stdin=subprocess.DEVNULL,
                )
        return self.done[command]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    assert Path(OVBENCH).is_file(), f"the ovbench executable is not installed at {OVBENCH}"
    return Session(tmp_path_factory.mktemp("readme"))


def slug(example: Example) -> str:
    return f"L{example.line}-" + re.sub(r"[^A-Za-z0-9.=-]+", "_", example.command.removeprefix("ovbench "))[:60]


# ----------------------------------------------------------------------------- tests


def test_the_readme_has_its_examples():
    assert MAIN_JOB in {e.command for e in RUNNABLE}, "the main job is no runnable README example"
    assert "ovbench table" in {e.command for e in RUNNABLE}
    assert "ovbench eval --method clip-dense" in {e.command for e in RUNNABLE}  # the smoke test
    assert len(UNIQUE_OVBENCH) >= 15 and len(MARKED) >= 5
    assert resume_id(), "no --resume example"
    assert "my_set.yaml" in yaml_files(TEXT)


def test_every_example_runs_or_is_marked():
    """A bash line that is not an `ovbench` command (or an export) says what it needs."""
    unmarked = [f"README.md:{e.line}: {e.command}" for e in EXAMPLES if not e.needs and not e.is_ovbench and not e.export]
    assert not unmarked, "mark these with `# needs: ...` or make them ovbench commands:\n" + "\n".join(unmarked)


def test_marked_examples_are_listed():
    listing = [f"README.md:{e.line}: {e.command}\n    needs: {e.needs}" for e in MARKED]
    print("\nREADME examples not run here:\n" + "\n".join(listing))
    assert all(e.needs.strip() for e in MARKED)


@pytest.mark.parametrize("example", UNIQUE_OVBENCH, ids=slug)
def test_example_runs(session, example):
    done = session.result(example.command)
    assert done.returncode == 0, (
        f"README.md:{example.line}: `{as_run(example.command)}` exited {done.returncode}\n"
        f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
    )


def test_main_job_output_has_the_shape_the_readme_shows(session):
    """The README shows how the main job's output ends; the run's table has that header and rows."""
    done = session.result(MAIN_JOB)
    assert done.returncode == 0, done.stderr[-3000:]
    section = TEXT[TEXT.index("## Main job") :]
    shown = next(b for b in blocks(section) if b.lang == "text").lines
    title = next(line for line in shown if line.startswith("gsnet (scratch,"))
    pattern = re.escape(title).replace(r"1000", r"\d+")
    pattern = re.sub(r"gsnet\\-\d+T\d+\\-[0-9a-f]+", r"\\S+", pattern)
    assert re.search(pattern, done.stdout), (title, done.stdout)
    header = next(line for line in shown if "evaluation set" in line)
    assert header in done.stdout
    for row in (line for line in shown if line.startswith("│")):
        assert row.split("│")[1].strip() in done.stdout
    for progress in (line for line in shown if re.match(r"toyland-\w+: mIoU", line)):
        assert progress.split(":")[0] + ": mIoU" in done.stderr


def test_table_renders_what_the_examples_recorded(session):
    done = session.result("ovbench table")
    assert done.returncode == 0, done.stderr
    assert "gsnet" in done.stdout and "toyland-flood" in done.stdout
    latex = next(e.command for e in UNIQUE_OVBENCH if "--format latex --out" in e.command)
    assert session.result(latex).returncode == 0
    words = shlex.split(latex)
    written = (session.work / words[words.index("--out") + 1]).read_text()
    assert written.startswith("\\begin{tabular}") and "gsnet & scratch" in written, written


def test_resume_example_continues_the_main_job(session):
    """The main job ran under the id the resume example names, so resuming finds it finished."""
    resume = next(e.command for e in UNIQUE_OVBENCH if "--resume" in e.command)
    done = session.result(resume)
    assert done.returncode == 0, done.stderr
    assert f"run {resume_id()} is finished" in done.stdout + done.stderr, (done.stdout, done.stderr)
