"""The health probe: one tiny real inference on a served model, the same for the supervisor, the API's /health and
`bertforge serve`.

Triton keeps saying "ready" when a model's python stub died; only an inference shows it. Each task's probe text is
the registry's (`bertforge.tasks.Task.health_text`); `{mask}` in it becomes the model's own mask token ([MASK],
<mask>, ...), read from its exported tokenizer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from bertforge import tasks
from bertforge.served_model import ServedModelDir, served_models


def probe(client: Any, model: str, task: str, text: str) -> Any:
    """One inference of `text` (`probe_text`) on the model `model` serving `task`, through each of the task's inputs
    (a pair task gets the text twice): the answers of a BertforgeClient, an awaitable of an AsyncBertforgeClient. A
    failure raises (or the awaitable does) the client's ServingError; an unknown task, ValueError."""
    item = (text, text) if tasks.task(task).pair else text
    return client.infer(model, [item])


@lru_cache(maxsize=256)
def probe_text(repo: str | Path, model: str, task: str) -> str:
    """The text the probe of `model` (serving `task`) in `repo` sends; the tokenizer is read only for `{mask}`, once
    per model (the supervisor probes every few seconds; Triton's model control is off, so a model does not change)."""
    text = tasks.task(task).health_text
    if "{mask}" not in text:
        return text
    from bertforge.served_model import special_tokens

    return text.format(mask=special_tokens(ServedModelDir.in_repo(repo, model).tokenizer_dir)["mask_token"])


def probed_models(repo: str | Path) -> dict[str, str]:
    """{model name: task} of every exported model of `repo` (those with a serving.json): what gets probed."""
    return {model.name: model.settings().task for model in served_models(repo) if model.serving_file.is_file()}
