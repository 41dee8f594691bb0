"""A stand-in for mii.legacy's non-persistent objects, without DeepSpeed, for the CPU tests of the MII
workers (tests/test_inference.py, tests/test_invariance.py): deploy -> non_persistent_models[name] =
(pipeline, task), pipeline.model an engine wrapping the model, query(...) = pipeline(texts, **kwargs), the call
chain the workers use. STANDIN_FORCE_STEP=k doctors it: at step k every row takes its least likely token."""

import os
import textwrap

STANDIN = '''
"""mii.legacy's non-persistent objects without DeepSpeed: deploy -> non_persistent_models[name] =
(pipeline, task), pipeline.model an engine wrapping the model, query(...) = pipeline(texts, **kwargs)."""
import enum
import os
import torch
from transformers import pipeline

non_persistent_models = {}


class DeploymentType(enum.Enum):
    NON_PERSISTENT = "non-persistent"


class InferenceEngine(torch.nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module, self.generate, self.config, self.device = module, module.generate, module.config, module.device

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class ForceWorst:
    """A doctored engine (STANDIN_FORCE_STEP set): at that step every row takes its least likely token."""

    def __init__(self, step):
        self.step, self.calls = step, 0

    def __call__(self, input_ids, scores):
        if self.calls == self.step:
            finite = scores.masked_fill(~torch.isfinite(scores), float("inf"))
            worst = finite.argmin(-1, keepdim=True)
            scores = torch.full_like(scores, float("-inf")).scatter(-1, worst, 0.0)
        self.calls += 1
        return scores


class Client:
    def __init__(self, name):
        self.name = name

    def query(self, request, **kwargs):
        step = os.environ.get("STANDIN_FORCE_STEP")
        if step is not None:
            kwargs["logits_processor"] = [*kwargs.get("logits_processor", []), ForceWorst(int(step))]
        return non_persistent_models[self.name][0](request["query"], **kwargs)

    def terminate(self):
        del non_persistent_models[self.name]


def deploy(task, model, deployment_name, deployment_type, mii_config):
    assert deployment_type is DeploymentType.NON_PERSISTENT and mii_config["skip_model_check"]
    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # where the worker puts its inputs
    pipe = pipeline(task, model=model, device=device, torch_dtype=torch.float32)
    pipe.model = InferenceEngine(pipe.model)
    non_persistent_models[deployment_name] = (pipe, task)


def mii_query_handle(name):
    return Client(name)
'''


def install(tmp_path, monkeypatch) -> None:
    """Put the stand-in first on the PYTHONPATH the workers' processes inherit."""
    standin = tmp_path / "standin"
    (standin / "mii" / "legacy").mkdir(parents=True)
    (standin / "mii" / "__init__.py").write_text("")
    (standin / "mii" / "legacy" / "__init__.py").write_text(textwrap.dedent(STANDIN))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(standin), os.environ.get("PYTHONPATH")])))
